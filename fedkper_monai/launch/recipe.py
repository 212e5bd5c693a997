"""FedKPer (and every baseline of the registry) as a FLARE 2.9 recipe: one object, run in ``SimEnv``,
``PocEnv`` or ``ProdEnv``.

The recipe's job is the one :mod:`fedkper_monai.flare.jobspec` writes to ``jobs/`` (the same configs, the
same components): a recipe does not rebuild the job from Python objects, so ``jobs/``, ``simulate`` and a
recipe cannot drift apart. Example (``job.py``)::

    from nvflare.recipe import SimEnv
    from fedkper_monai.launch.recipe import FedKPerRecipe

    recipe = FedKPerRecipe("fedkper", data_root="data/retina", num_rounds=50)
    run = recipe.execute(SimEnv(num_clients=20, num_threads=4, workspace_root="/tmp/fedkper"))
    print(run.get_result())          # the simulator workspace; metrics in server/simulate_job/metrics.jsonl

For real sites leave ``data_root`` unset (each site names its own data with ``fedkper-monai site-config``)
and size the network from a local copy of one datalist with ``network_from``; ``python job.py --export
--export-dir DIR`` writes the job folder (FLARE's recipe convention).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nvflare.job_config.api import FedJob
from nvflare.recipe.spec import Recipe

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.jobspec import JobSettings, controller_args, job_configs, load_job, save_job_configs
from fedkper_monai.launch.checks import check_job_fields

__all__ = ["FedKPerRecipe"]


class _SpecJob(FedJob):
    """A FLARE job whose apps are our job configs, written as they are (no custom code is copied)."""

    def __init__(self, meta: dict, server: dict, client: dict) -> None:
        super().__init__(name=meta["name"], min_clients=int(meta.get("min_clients", 1)))
        self.configs = (meta, server, client)

    def export_job(self, job_root: str) -> Path:
        """Write ``job_root/<name>/`` (``meta.json``, ``app/config/*.json``); FLARE's envs submit that folder."""
        return save_job_configs(Path(job_root) / self.name, *self.configs)

    def simulator_run(self, workspace: str, n_clients: int | None = None, clients: list[str] | None = None,
                      threads: int | None = None, gpu: str | None = None, log_config: str | None = None) -> int:
        """Run the job in FLARE's simulator in ``workspace`` (as ``fedkper-monai simulate`` does: our allow-list,
        one OpenMP thread per site process on a small machine); returns its exit code.

        ``threads`` None, or equal to the number of sites (``SimEnv``'s default) when that many site processes
        would not fit in this machine's memory: :func:`~fedkper_monai.launch.simulate.default_threads` (the sites
        trained per round), said on the console; the metrics are the same, the run slower.
        """
        from fedkper_monai.flare.workspace import allow_components
        from fedkper_monai.launch.simulate import run_simulator

        if clients:
            expected = [f"site-{index}" for index in range(1, len(clients) + 1)]
            if list(clients) != expected:
                raise FedKPerError(f"sites find their datalists as site-1 ... site-N; got {clients}: use num_clients={len(clients)}")
            n_clients = len(clients)
        if not n_clients:
            raise FedKPerError("SimEnv needs num_clients")
        threads = self._threads(n_clients, threads)
        folder = Path(workspace).resolve()
        with tempfile.TemporaryDirectory(prefix="fedkper_recipe_") as scratch:
            job = self.export_job(scratch)
            allow_components(folder, create=True)
            result = run_simulator(job, folder, n_clients, threads, log_config=log_config or "concise",
                                   log_path=Path(scratch) / "simulator.log", echo=True)
        return result.code

    def _threads(self, n_clients: int, threads: int | None) -> int:
        """The simulator's ``-t``: ``threads`` unless it is unset or one process per site would not fit."""
        from fedkper_monai.launch.simulate import default_threads

        fraction = float(controller_args(self.configs[1]).get("sample_fraction", 1.0))
        fitting = default_threads(n_clients, fraction)
        # SimEnv turns an unset num_threads into num_clients: both mean "one process per site" here, and at
        # ~0.6 GB a site process, 50 of them would exhaust a 24 GB machine (and every other run on it).
        if threads is None or (threads == n_clients and fitting < n_clients):
            if threads is not None:
                print(f"{n_clients} site processes would not fit in this machine's memory: running {fitting} at a time "
                      f"(same metrics; pass SimEnv(num_threads=...) below {n_clients} to choose)", flush=True)
            return fitting
        return threads


class FedKPerRecipe(Recipe):
    """A FedKPer run, or any algorithm of :mod:`fedkper_monai.algorithm_registry` by name, as a FLARE recipe.

    Args:
        algorithm: a registry name (``fedkper``, ``fedavg``, ``fedprox``, ``fedntd``, ``ditto``, ...); the job is
            the paper's setting for it (the settings of ``jobs/<algorithm>_medmnist``).
        name: the FLARE job name (default ``<algorithm>_medmnist``).
        settings: a :class:`~fedkper_monai.flare.jobspec.JobSettings` to start from instead (its algorithm wins).
        job: a job folder to start from instead (one of ``jobs/`` or an exported one).
        data_root: the sites' data folder, written into the job: simulation on one machine only.
        network_from: a datalist or prepared folder that sizes the network (classes, channels, image size)
            without putting a path into the job; ``data_root`` does this too.
        num_rounds, sample_fraction, local_epochs, seed, validate_every: override the job's values.
        min_clients: sites FLARE waits for before it starts the job (the job's ``meta.json``; the run's sites
            are those connected then).

    Raises:
        DataError: a field of the job the sites or the server would refuse (naming the job file and the field;
            :func:`~fedkper_monai.launch.checks.check_job_fields`), before FLARE or any data is touched.
    """

    def __init__(
        self,
        algorithm: str = "fedkper",
        *,
        name: str | None = None,
        settings: JobSettings | None = None,
        job: str | Path | None = None,
        data_root: str | Path | None = None,
        network_from: str | Path | None = None,
        num_rounds: int | None = None,
        sample_fraction: float | None = None,
        local_epochs: int | None = None,
        seed: int | None = None,
        validate_every: int | None = None,
        min_clients: int | None = None,
    ) -> None:
        from fedkper_monai.launch.overrides import JobOverrides, apply_overrides

        meta, server, client = _base_configs(algorithm, settings, job)
        # What the sites and the server would refuse, refused here before anything reads the job.
        check_job_fields(job if job is not None else meta["name"], server, client)
        if name:
            meta["name"] = name
        if min_clients is not None:
            meta["min_clients"] = int(min_clients)
        overrides = JobOverrides(
            rounds=num_rounds, data_root=None if data_root is None else str(data_root), sample_fraction=sample_fraction,
            local_epochs=local_epochs, seed=seed, validate_every=validate_every,
        )
        apply_overrides(meta, server, client, overrides, network_from=network_from)
        self.algorithm = algorithm
        self.num_rounds = int(controller_args(server)["num_rounds"])
        super().__init__(_SpecJob(meta, server, client))

    @property
    def configs(self) -> tuple[dict, dict, dict]:
        """``(meta, server, client)`` configs of the job this recipe runs (to read; edit with care)."""
        return self._job.configs


def _base_configs(algorithm: str, settings: JobSettings | None, job: str | Path | None) -> tuple[dict, dict, dict]:
    """The configs a recipe starts from: a job folder, given settings, or the paper's setting for ``algorithm``
    (the settings of ``jobs/<algorithm>_medmnist``)."""
    if job is not None:
        return load_job(job)
    return job_configs(settings or JobSettings(name=f"{algorithm}_medmnist", algorithm=algorithm))
