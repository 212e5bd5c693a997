"""``fedkper-monai prepare ...``: turn MedMNIST files, class folders, manifests or the demo set into site datalists.

Heavy libraries (numpy, MONAI, PIL) are imported inside the handlers so ``fedkper-monai --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["add_prepare_parser"]

_CONTRACT = (
    "Output: DIR/site-1.json .. site-N.json (training + stratified local test), DIR/global_test.json, "
    "DIR/global_val.json, DIR/summary.json and summary.txt. Images stay where they are (with --copy: under "
    "DIR/images/; medmnist and demo always write theirs there). "
    "Nothing is left in DIR when the command fails."
)


def _add_partition_args(parser: argparse.ArgumentParser, *, sites_required: bool) -> None:
    # Each dest is the ImportSettings field the flag sets, so errors can name the flag (see _naming_flags).
    parser.add_argument("--sites", dest="num_sites", metavar="SITES", type=int, required=sites_required, help="number of sites N (site-1 .. site-N)")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration; small = strong label skew (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the partition and local splits (default 0)")
    parser.add_argument("--partition", choices=("dirichlet", "iid"), default="dirichlet", help="default dirichlet")
    parser.add_argument("--min-samples", type=int, default=10, help="minimum samples per site (default 10, as the reference)")
    parser.add_argument("--local-test-fraction", type=float, default=0.2, help="each site's stratified local test share (default 0.2)")
    parser.add_argument("--holdout-sites", type=int, default=0, metavar="K",
                        help="keep K of the sites out of training (holdout-1.json ...): the server scores the global model "
                        "on all their samples every round (unseen sites; default 0)")
    parser.add_argument("--out", required=True, help="output folder DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _add_size_limits(parser: argparse.ArgumentParser) -> None:
    from fedkper_monai.data.sources.headers import MAX_IMAGE_VALUES, MIN_IMAGE_SIDE

    # Checked from each file's header before it is decoded (a small PNG can decode to gigabytes).
    parser.add_argument("--max-image-values", type=int, default=MAX_IMAGE_VALUES, metavar="N",
                        help="refuse an image larger than N values, width x height [x depth] x channels, by its header, "
                        f"before decoding (default {MAX_IMAGE_VALUES} = 2^28: 1 GiB as float32, e.g. 16384x16384 gray, "
                        "512x512x1024 CT)")
    parser.add_argument("--min-image-side", type=int, default=MIN_IMAGE_SIDE, metavar="PIXELS",
                        help=f"refuse an image with a side shorter than PIXELS (default {MIN_IMAGE_SIDE}): resizing it up "
                        "would invent the image (classification only: segmentation cases are cropped, not resized)")


def _add_file_args(parser: argparse.ArgumentParser) -> None:
    _add_size_limits(parser)
    parser.add_argument("--global-test-fraction", type=float, default=0.2,
                        help="stratified global test share when there is no split given (default 0.2)")
    parser.add_argument("--global-val-fraction", type=float, default=0.1,
                        help="stratified global validation share when there is no split given (default 0.1)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="task size after transforms, e.g. 64 64 (default: the images' common size)")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None, help="2 or 3 (default: from the images)")
    parser.add_argument("--copy", action="store_true", help="copy the images under DIR/images (default: reference them in place)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="convert every image to 1 (gray) or 3 (RGB) channels; needed when they mix (default: as stored)")


def _naming_flags(parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]):
    """``handler`` whose DataError names the flag (``--sites``) where the importers name the parameter (``num_sites``).

    A flag's dest is the Python parameter it sets, so the parser itself is the table.
    """

    def run(args: argparse.Namespace) -> int:
        from fedkper_monai.errors import DataError

        try:
            return handler(args)
        except DataError as error:
            flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
            if error.field not in flags:
                raise
            raise DataError(error.path, error.reason, field=flags[error.field]) from None

    return run


def _settings(args: argparse.Namespace):
    """The ``ImportSettings`` that the flags of this command set (the others keep their defaults)."""
    import dataclasses

    from fedkper_monai.data.import_settings import ImportSettings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ImportSettings) if hasattr(args, f.name)}
    if given.get("site_names") is not None:
        given["site_names"] = dict(given["site_names"])
    return ImportSettings(**given)


def _site_mapping(text: str) -> tuple[str, str]:
    """``hospital-a=site-1`` -> ``("hospital-a", "site-1")`` (a manifest site value and its FLARE name)."""
    value, sep, name = text.partition("=")
    if not sep or not value or not name:
        raise argparse.ArgumentTypeError(f"expected VALUE=SITE_NAME, e.g. hospital-a=site-1, got {text!r}")
    return value, name


def _print_summary(summary: dict[str, Any], out: str) -> int:
    from fedkper_monai.data.summary import format_summary

    print(format_summary(summary), end="")
    held_out = len(summary.get("holdout_sites") or {})
    extra = f", {held_out} held-out site(s) (holdout-*.json)" if held_out else ""
    print(f"wrote {summary['num_sites']} site datalists{extra}, global_test.json, global_val.json and summary.* to {out}")
    return 0


def _run_medmnist(args: argparse.Namespace) -> int:
    from fedkper_monai.data.sources.npz import import_medmnist

    summary = import_medmnist(
        args.out, settings=_settings(args), npz=args.npz, flag=args.flag, size=args.size, cache_dir=args.cache_dir,
        mirror=args.mirror,
    )
    return _print_summary(summary, args.out)


def _run_folders(args: argparse.Namespace) -> int:
    from fedkper_monai.data.sources.folders import import_folders

    summary = import_folders(args.root, args.out, settings=_settings(args))
    return _print_summary(summary, args.out)


def _run_manifest(args: argparse.Namespace) -> int:
    from fedkper_monai.data.sources.manifest import import_manifest

    if args.task == "segmentation":
        return _run_segmentation_manifest(args)
    summary = import_manifest(args.manifest, args.out, class_names=args.class_names, settings=_settings(args))
    return _print_summary(summary, args.out)


def _run_segmentation_manifest(args: argparse.Namespace) -> int:
    from fedkper_monai.data.sources.segmentation import import_segmentation_manifest
    from fedkper_monai.data.summary import format_summary

    summary = import_segmentation_manifest(args.manifest, args.out, class_names=args.class_names, settings=_settings(args))
    print(format_summary(summary), end="")
    held_out = len(summary.get("holdout_sites") or {})
    extra = f", {held_out} held-out site(s) (holdout-*.json)" if held_out else ""
    print(f"wrote {summary['num_sites']} segmentation site datalists{extra}, global lists and summary.* to {args.out}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from fedkper_monai.data.demo import ensure_demo_data
    from fedkper_monai.data.summary import format_summary
    from fedkper_monai.errors import DataError

    # The first existing folder on the way to --out must be a folder: a file there is the user's mistake, not a crash.
    existing = next(parent for parent in (Path(args.root), *Path(args.root).parents) if parent.exists())
    if not existing.is_dir():
        raise DataError(existing, f"--out: {args.root} lies under a file, not a folder")
    root = ensure_demo_data(args.root, num_sites=args.num_sites, seed=args.seed, alpha=args.alpha, progress=args.progress)
    print(format_summary(json.loads((Path(root) / "summary.json").read_text(encoding="utf-8"))), end="")
    print(f"synthetic demo data (not medical images) ready in {root}")
    return 0


def _run_mni152(args: argparse.Namespace) -> int:
    from fedkper_monai.data.mni152 import prepare_mni152_demo

    summary = prepare_mni152_demo(args.source, args.out, num_sites=args.num_sites, cases_per_site=args.cases, patch_size=args.patch_size, seed=args.seed)
    for site, info in summary["sites"].items():
        print(f"{site}: {info['training_cases']} training / {info['test_cases']} test cases, field of view "
              f"{info['crop_side_mm']} mm, grey-matter share {info['mean_grey_matter_share']:.2f}")
    print(f"3D tissue segmentation federation (ONE MNI152 template, not a patient cohort) ready in {args.out}")
    return 0


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare {medmnist,folders,manifest,demo}`` to the top-level ``fedkper-monai`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    prepare = subparsers.add_parser(
        "prepare", help="import data and partition it over sites (datalists for MONAI + FLARE)",
        description="Import medical images and write per-site datalists. " + _CONTRACT, formatter_class=formatter,
        epilog="example:\n  fedkper-monai prepare medmnist --npz retinamnist.npz --sites 20 --alpha 0.1 --seed 0 --out data/retina",
    )
    kinds = prepare.add_subparsers(dest="source", metavar="SOURCE")
    prepare.set_defaults(func=lambda args: (prepare.print_help(), 2)[1])

    medmnist = kinds.add_parser(
        "medmnist", help="a MedMNIST .npz (2D or 3D), local or downloaded by name", formatter_class=formatter,
        description="Import a MedMNIST-layout .npz (train/val/test images and labels). The train split is "
        "partitioned over the sites, val becomes global_val.json, test becomes global_test.json. " + _CONTRACT,
        epilog="examples:\n"
        "  fedkper-monai prepare medmnist --npz ../shared/data/medmnist/retinamnist.npz --sites 20 --alpha 0.1 --seed 0 --out data/retina\n"
        "  fedkper-monai prepare medmnist --flag bloodmnist --size 28 --sites 20 --alpha 0.1 --seed 0 --out data/blood\n"
        "  fedkper-monai prepare medmnist --flag organmnist3d --sites 10 --alpha 0.5 --out data/organ3d",
    )
    source = medmnist.add_mutually_exclusive_group(required=True)
    source.add_argument("--npz", help="local .npz file")
    source.add_argument("--flag", help="MedMNIST name to download from Zenodo (MD5-checked), e.g. bloodmnist, organcmnist, organsmnist")
    medmnist.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="image size of the download (default 28)")
    medmnist.add_argument("--cache-dir", default=None, help="download folder (default ~/.cache/fedkper_monai/medmnist)")
    medmnist.add_argument("--mirror", default=None, help="base URL of a mirror of the Zenodo files (http(s):// or file://)")
    _add_partition_args(medmnist, sites_required=True)
    _add_size_limits(medmnist)
    medmnist.set_defaults(func=_naming_flags(medmnist, _run_medmnist))

    folders = kinds.add_parser(
        "folders", help="a class-folder tree root/<class_name>/*.png|jpg|nii|nii.gz|dcm", formatter_class=formatter,
        description="Import root/<class_name>/<images> (or root/{train,val,test}/<class_name>/<images>). Classes are the "
        "folder names, sorted. Without train/test folders a stratified global test and val share is held out. " + _CONTRACT,
        epilog="example:\n  fedkper-monai prepare folders --root scans/ --sites 4 --alpha 0.5 --seed 0 --image-size 64 64 --out data/scans",
    )
    folders.add_argument("--root", required=True, help="folder with one sub-folder per class")
    _add_partition_args(folders, sites_required=True)
    _add_file_args(folders)
    folders.set_defaults(func=_naming_flags(folders, _run_folders))

    manifest = kinds.add_parser(
        "manifest", help="a CSV manifest image,label[,site][,split][,id]", formatter_class=formatter,
        description="Import a CSV with columns image,label and optionally site (natural partition: one FLARE site per "
        "value, its datalist named by the value or --site-names; --sites ignored), split (train/val/test) and id. Paths "
        "are relative to the CSV or absolute. " + _CONTRACT,
        epilog="examples:\n"
        "  fedkper-monai prepare manifest --manifest studies.csv --out data/hospitals          # with a site column\n"
        "  fedkper-monai prepare manifest --manifest studies.csv --sites 8 --alpha 0.1 --out data/skewed\n"
        "  fedkper-monai prepare manifest --task segmentation --manifest cases.csv --class-names background liver tumour "
        "--sites 4 --alpha 0.5 --out data/liver",
    )
    manifest.add_argument("--manifest", required=True, help="CSV file")
    manifest.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                          help="segmentation: label is a label-map path per case, every case is checked (shapes, affines, "
                          "label values, empty maps, 4D) and cases are stratified by their dominant foreground class "
                          "(default classification)")
    manifest.add_argument("--class-names", nargs="+", default=None, help="class names in index order; needed when the label column holds names (default: numeric labels 0..C-1); "
                          "with --task segmentation required, background first")
    manifest.add_argument("--site-names", nargs="+", type=_site_mapping, default=None, metavar="VALUE=SITE",
                          help="FLARE site name of a site column value, e.g. hospital-a=site-1 (default: the value: hospital-a.json)")
    _add_partition_args(manifest, sites_required=False)
    _add_file_args(manifest)
    manifest.set_defaults(func=_naming_flags(manifest, _run_manifest))

    demo = kinds.add_parser(
        "demo", help="the built-in synthetic demo set (no download)", formatter_class=formatter,
        description="Generate the built-in SYNTHETIC 8-class 28x28 grayscale set (noisy shapes and textures, not medical "
        "images) in the same format as imported data. Reuses a complete DIR made with the same settings.",
        epilog="example:\n  fedkper-monai prepare demo --sites 4 --alpha 0.5 --seed 0 --out data/demo",
    )
    demo.add_argument("--sites", dest="num_sites", metavar="SITES", type=int, default=4, help="number of sites (default 4)")
    demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--out", dest="root", metavar="OUT", required=True, help="output folder DIR")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.set_defaults(func=_naming_flags(demo, _run_demo))

    mni152 = kinds.add_parser(
        "mni152-demo", help="a 3D tissue-segmentation federation from the MNI152 template", formatter_class=formatter,
        description="Write NIfTI crops (background / grey / white matter) of the ONE real MNI152 T1 template and its "
        "tissue maps as a multi-site segmentation federation: per site its own intensity profile, field of view and "
        "grey-matter share. One template, not a patient cohort.",
        epilog="example:\n  fedkper-monai prepare mni152-demo --source ../shared/data/mni152 --sites 3 --out data/mni152",
    )
    mni152.add_argument("--source", required=True, help="folder of the three mni_icbm152_*_converted.nii.gz files")
    mni152.add_argument("--sites", dest="num_sites", metavar="SITES", type=int, default=3, help="2 to 4 sites (default 3)")
    mni152.add_argument("--cases", type=int, default=10, help="training cases per site (default 10; 2 more are its local test)")
    mni152.add_argument("--patch-size", type=int, default=32, help="training patch side, a multiple of 8 (default 32)")
    mni152.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    mni152.add_argument("--out", required=True, help="output folder DIR")
    mni152.set_defaults(func=_naming_flags(mni152, _run_mni152))
