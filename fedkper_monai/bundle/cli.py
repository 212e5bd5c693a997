"""``fedkper-monai bundle export``, ``predict`` and ``evaluate``: a run's models outside the federation.

Heavy libraries (torch, MONAI, matplotlib) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_bundle_parser", "add_predict_parser", "add_evaluate_parser"]

_EXPORT_EXAMPLE = """\
example:
  fedkper-monai bundle export --run /tmp/fedkper_demo --site site-1 --out bundles/site-1
  fedkper-monai bundle export --run /tmp/fedkper_demo --global --best --out bundles/best   # best on global_val.json
  python -m monai.bundle run --config_file bundles/site-1/configs/inference.json --bundle_root bundles/site-1 \\
      --dataset_dir new_images/ --output_file predictions.csv
"""

_PREDICT_EXAMPLE = """\
examples:
  fedkper-monai predict --model bundles/site-1 --images new_images/ --out predictions.csv
  fedkper-monai predict --model RUN/site-1/simulate_job/personalized_model.pt --images data/site-1.json --out p.csv
  fedkper-monai predict --model w.pt --network '{"name": "reference_cnn", "spatial_dims": 2, "in_channels": 1,
      "num_classes": 8, "image_size": [28, 28]}' --images imgs/ --out p.csv
  fedkper-monai predict --model zoo/my_bundle --trust-bundle --images new_images/ --out p.csv   # its config imports os
"""


_BEST_HELP = (
    "the model best on validation instead of the latest: for --global best_global_model.pt (the round whose global "
    "model scored highest on the server's global_val.json, earliest on ties; the round line's best_val_round), for "
    "--site the site's best_personalized_model.pt (best on a validation part of its own training data, never its "
    "local test split). A run without that validation has none: an error names the file"
)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a bundle folder, or a state dict (personalized_model.pt, global_model.pt); "
                        "a bundle's config is code that MONAI runs (its '$' expressions, _target_ classes)")
    parser.add_argument("--trust-bundle", action="store_true",
                        help="run a bundle whose config imports modules beyond torch, monai and numpy ($import os, "
                        "__import__, a _target_ of its own scripts, ...): refused without it. Only for a bundle whose "
                        "source you trust: the check is a tripwire, not a sandbox")
    parser.add_argument("--run", help="the run a state dict came from (found by itself when the file sits in its run folder)")
    parser.add_argument("--best", action="store_true", help="instead of --model: the run's (--run) global model best on "
                        "validation, best_global_model.pt, or with --site its personalized one (see bundle export --best)")
    parser.add_argument("--site", help="with --best: that site's best_personalized_model.pt rather than the global model")
    parser.add_argument("--network", help="network spec of a state dict without its run: JSON text or file")
    parser.add_argument("--transforms", help="transform config name or path for --network (default classification_2d)")
    parser.add_argument("--split", default="test", choices=("training", "test", "validation"), help="list of a datalist (default: test)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_bundle_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bundle export``."""
    parser = subparsers.add_parser("bundle", help="MONAI bundles of a run's models", description="MONAI bundles of a run's models.")
    commands = parser.add_subparsers(dest="bundle_command", metavar="ACTION")
    export = commands.add_parser(
        "export",
        help="write a run's global or personalized model as a MONAI bundle",
        description="Write the global model or one site's personalized model of a run as a MONAI bundle that runs "
        "with MONAI alone (configs/metadata.json, configs/inference.json, models/model.pt, LICENSE, docs/README.md).",
        epilog=_EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--run", required=True, metavar="RUN_DIR", help="the run's workspace (-w of `fedkper-monai simulate`)")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--global", dest="global_model", action="store_true", help="the run's global model (the latest; see --best)")
    which.add_argument("--site", help="a site's personalized model, e.g. site-1 (its latest; see --best)")
    export.add_argument("--best", action="store_true", help=_BEST_HELP)
    export.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="the bundle folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace BUNDLE_DIR if it exists and is not empty")
    export.set_defaults(func=_export)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="predict classes of images (a folder or a datalist) with a bundle or a run's model",
        description="Batch inference (CPU or CUDA) writing one CSV row per image: id, image, predicted index and "
        "class, one probability per class, and the label when the datalist has one. A bundle is code: MONAI "
        "runs its config's '$' expressions and _target_ classes; one that imports modules beyond torch, monai "
        "and numpy is refused unless --trust-bundle.",
        epilog=_PREDICT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(parser)
    parser.add_argument("--images", required=True,
                        help="a folder of images or a datalist JSON (a plain MONAI one too: ids and labels optional)")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.set_defaults(func=_predict)


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="accuracy, balanced accuracy, per-class recall and confusion matrix on a labelled datalist",
        description="Evaluate a bundle or a run's model on a labelled datalist; writes OUT/metrics.json, "
        "OUT/confusion_matrix.png and OUT/predictions.csv. A bundle is code (see predict --help): one whose config "
        "imports modules beyond torch, monai and numpy is refused unless --trust-bundle.",
    )
    _add_model_options(parser)
    parser.add_argument("--datalist", required=True, help="a labelled datalist JSON (e.g. a site's site-N.json)")
    parser.add_argument("--out", required=True, help="folder to write metrics.json, confusion_matrix.png, predictions.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    parser.set_defaults(func=_evaluate)


def _export(args: argparse.Namespace) -> int:
    from fedkper_monai.bundle.export import export_bundle

    out = export_bundle(args.run, args.out, site=None if args.global_model else args.site, overwrite=args.overwrite, best=args.best)
    print(f"wrote MONAI bundle {out}")
    print(f"  python -m monai.bundle run --config_file {out}/configs/inference.json --bundle_root {out} --dataset_dir IMAGES --output_file predictions.csv")
    return 0


def _model_and_inputs(args: argparse.Namespace, inputs: str, labels: bool = False):
    """The model, then the inputs read against the class count it declares (a plain MONAI datalist names none);
    ``labels``: every input must have one (``evaluate``)."""
    from fedkper_monai.bundle.inference import load_inputs, load_model, parse_network_spec
    from fedkper_monai.bundle.runs import locate_model
    from fedkper_monai.errors import FedKPerError

    if args.best:
        if args.model or not args.run:
            raise FedKPerError("--best takes the model from the run: give --run RUN_DIR and no --model")
        args.model = str(locate_model(args.run, site=args.site, best=True).weights_path)
    elif not args.model:
        raise FedKPerError("give --model (a bundle or a state dict), or --run RUN_DIR --best")
    elif args.site:
        raise FedKPerError("--site goes with --best (a state dict's site is found from its run folder)")
    network = parse_network_spec(args.network) if args.network else None
    model = load_model(args.model, run_dir=args.run, network=network, transforms=args.transforms, trust_bundle=args.trust_bundle)
    entries, names = load_inputs(inputs, split=args.split, num_classes=model.num_classes, labels=labels)
    if names and not model.class_names:
        model.class_names = list(names)  # a model that names no classes takes the datalist's names
    return model, entries


def _predict(args: argparse.Namespace) -> int:
    from fedkper_monai.bundle.inference import predict, write_predictions_csv

    model, entries = _model_and_inputs(args, args.images)
    probabilities = predict(model, entries, batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    write_predictions_csv(args.out, entries, probabilities, model.class_names)
    print(f"wrote {len(entries)} predictions of {model.source} to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fedkper_monai.bundle.evaluation import classification_metrics, save_confusion_matrix
    from fedkper_monai.bundle.inference import predict, write_predictions_csv
    from fedkper_monai.io import atomic_directory

    model, entries = _model_and_inputs(args, args.datalist, labels=True)
    probabilities = predict(model, entries, batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    labels = [int(entry["label"]) for entry in entries]
    metrics = classification_metrics(labels, probabilities.argmax(axis=1), model.class_names)
    metrics.update({"model": model.source, "datalist": str(Path(args.datalist).absolute()), "split": args.split})
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_confusion_matrix(metrics["confusion_matrix"], model.class_names, staging / "confusion_matrix.png", title=f"{Path(args.datalist).name} ({args.split})")
        write_predictions_csv(staging / "predictions.csv", entries, probabilities, model.class_names)
    recall = ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} -" for name, value in metrics["per_class_recall"].items())
    print(f"{metrics['num_samples']} samples: accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}")
    print(f"per-class recall: {recall}")
    print(f"wrote {args.out}/metrics.json, confusion_matrix.png, predictions.csv")
    return 0
