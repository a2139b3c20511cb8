"""deployments/: the work-pool templates render GPU requests, a valid Kubernetes Job and the
shared storage mounts, and prefect.yaml is valid; then, on a real Prefect server started here
(database in a temp dir): setup.sh creates the pools and the failure automation, `prefect deploy`
registers the deployments with the checkout's commit as version and the nightly ones with a
cancel-new concurrency limit, a process worker runs the local one end to end, headless Chromium
shows that run in the UI, the pool's concurrency limit keeps two runs apart, and a failed run
sends a notification."""

from __future__ import annotations

import asyncio
import csv as csv_module
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from uuid import uuid4
from zoneinfo import ZoneInfo

import fakes
import kubernetes_validate
import optuna
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas import filters
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, FlowRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.steps.core import run_steps
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Completed, Pending, Running
from prefect.utilities.engine import propose_state_sync
from prefect_processes import (
    REPO,
    WebhookReceiver,
    background,
    cli_env,
    prefect_server,
    run_cli,
    tail,
    worker_args,
)

from cifar_lit.config import TrainConfig
from cifar_lit.models import family

DEPLOYMENTS = REPO / "deployments"
PREFECT_YAML = DEPLOYMENTS / "prefect.yaml"
GPU_DEPLOYMENTS = ("cifar10-nightly-k8s", "cifar10-nightly-docker")
TRAIN_DEPLOYMENTS = (*GPU_DEPLOYMENTS, "cifar10-trials-k8s", "cifar10-local")
STORAGE = "/mnt/cifar-lit"  # where both GPU templates mount the shared volume
POOLS = {"gpu-kubernetes": "kubernetes", "gpu-docker": "docker", "local-process": "process"}
TASKS = {"download", "split", "fit", "test", "export", "promote", "registered"}  # registered: promoted
RUN_TIMEOUT = 600  # seconds for one tiny flow run: generous, the machine may be busy


def _spec() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _deployment(name: str) -> dict:
    return next(d for d in _spec()["deployments"] if d["name"] == name)


def _template(pool: str) -> dict:
    return json.loads((DEPLOYMENTS / "work-pools" / f"{pool}.json").read_text())


def _render(config_cls, deployment: str, **job_variables):
    """The job configuration a worker of the deployment's pool builds for one of its runs
    (``job_variables``: what a run or the UI sets on top of the deployment's)."""
    pool = _deployment(deployment)["work_pool"]
    values = {**pool["job_variables"], **job_variables}
    # A client for an address where nothing listens: the templates reference no blocks or
    # variables, so rendering must not need the API (without a client, Prefect would start its
    # ephemeral one).
    client = PrefectClient("http://127.0.0.1:9/api")
    config = asyncio.run(config_cls.from_template_and_values(_template(pool["name"]), values, client=client))
    flow_run = FlowRun(id=uuid4(), flow_id=uuid4(), name="nightly-test")
    config.prepare_for_flow_run(flow_run)
    return config, flow_run, values


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


# ---- no server needed ----------------------------------------------------------------------


def test_kubernetes_template_renders_a_one_gpu_job():
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config, flow_run, job_variables = _render(KubernetesWorkerJobConfiguration, "cifar10-nightly-k8s")
    pod = config.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "16Gi"}
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert container["image"] == job_variables["image"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": str(flow_run.id)} in container["env"]


def test_docker_template_renders_a_gpu_device_request():
    import docker
    from prefect_docker.worker import DockerWorkerJobConfiguration

    config, _, job_variables = _render(DockerWorkerJobConfiguration, "cifar10-nightly-docker")
    assert config.image == job_variables["image"]
    # The worker hands container_create_kwargs to docker-py, which turns them into the host
    # config the engine gets (with an explicit API version, no Docker daemon is contacted).
    host_config = docker.APIClient(version="1.44").create_host_config(
        mem_limit=config.mem_limit, **config.container_create_kwargs
    )
    assert host_config["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host_config["ShmSize"] == 2 * 1024**3 and host_config["Memory"] == 16 * 1024**3


# The oldest Kubernetes minor the template is checked against (the schemas kubernetes-validate
# ships), and the newest it knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_template_renders_a_valid_job(version):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config, _, _ = _render(KubernetesWorkerJobConfiguration, "cifar10-nightly-k8s")
    # Strict: a field in the wrong object (a Job field in the Pod spec) is an error here. The API
    # server only warns and drops it, so the Job the worker creates would silently lack it.
    try:
        kubernetes_validate.validate(config.job_manifest, version, strict=True)
        error = None
    except kubernetes_validate.ValidationError as e:
        error = f"at {'.'.join(str(p) for p in e.path)}: {e.message}"  # the schema's dump is pages long
    assert error is None, f"the Job manifest is invalid for Kubernetes {version} {error}"
    assert (config.job_manifest["spec"]["completions"], config.job_manifest["spec"]["parallelism"]) == (1, 1)


def test_kubernetes_job_mounts_the_storage_claim():
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    for variables, claim in (({}, "cifar-lit-storage"), ({"storage_claim": "team-a-data"}, "team-a-data")):
        config, _, _ = _render(KubernetesWorkerJobConfiguration, "cifar10-nightly-k8s", **variables)
        pod = config.job_manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == STORAGE]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"] == {"claimName": claim}


def test_docker_container_mounts_the_storage_volume():
    import docker
    from prefect_docker.worker import DockerWorkerJobConfiguration

    storage = {"Type": "volume", "Source": "cifar-lit-storage", "Target": STORAGE}
    config, _, _ = _render(DockerWorkerJobConfiguration, "cifar10-nightly-docker")
    api = docker.APIClient(version="1.44")  # the host config the engine gets, as above
    host_config = api.create_host_config(binds=config.volumes, **config.container_create_kwargs)
    assert host_config["Mounts"] == [storage]
    # The pool's own `volumes` variable adds bind mounts without dropping the storage volume.
    config, _, _ = _render(DockerWorkerJobConfiguration, "cifar10-nightly-docker", volumes=["/srv/extra:/extra:ro"])
    host_config = api.create_host_config(binds=config.volumes, **config.container_create_kwargs)
    assert host_config["Mounts"] == [storage] and host_config["Binds"] == ["/srv/extra:/extra:ro"]
    config, _, _ = _render(DockerWorkerJobConfiguration, "cifar10-nightly-docker", storage_volume="team-a-data")
    assert config.container_create_kwargs["mounts"] == [{**storage, "Source": "team-a-data"}]


def test_templates_expose_gpu_count_image_node_selector_and_tolerations():
    assert {"gpu_count", "image", "node_selector", "tolerations"} <= set(_template("gpu-kubernetes")["variables"]["properties"])
    assert {"gpu_count", "image"} <= set(_template("gpu-docker")["variables"]["properties"])
    for name in GPU_DEPLOYMENTS:  # a misspelt job variable would be silently ignored
        pool = _deployment(name)["work_pool"]
        assert set(pool["job_variables"]) <= set(_template(pool["name"])["variables"]["properties"]), name


def test_prefect_yaml_is_valid(monkeypatch):
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root, as for `prefect deploy`
    spec = _spec()
    model = PrefectYamlModel.model_validate(spec)
    assert [d.name for d in model.deployments] == [*GPU_DEPLOYMENTS, "cifar10-trials-k8s", "weekly-sweep",
                                                   "cifar10-local", "batch-predict", "predict-local"]
    assert {d.work_pool.name for d in model.deployments} == set(POOLS)
    for deployment in model.deployments:
        # Every deployment records the commit it was deployed from (the build step's output).
        assert deployment.version == "{{ commit.stdout }}", deployment.name
        if deployment.name not in TRAIN_DEPLOYMENTS:
            continue
        assert deployment.entrypoint == "flows/train_flow.py:train_flow"
        flow = load_flow_from_entrypoint(deployment.entrypoint)
        assert flow.name == "train"
        assert isinstance(flow.validate_parameters(deployment.parameters)["config"], TrainConfig)
    for name in GPU_DEPLOYMENTS:
        (schedule,) = _deployment(name)["schedules"]
        cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        assert (cron.cron, cron.timezone, schedule["active"]) == ("0 2 * * *", "Europe/Berlin", True)
        config = TrainConfig(**_deployment(name)["parameters"]["config"])
        assert (config.accelerator, config.precision, config.devices) == ("gpu", "bf16-mixed", 1)
        assert config.wandb_mode == "auto"
        # Everything a run keeps goes to the mounted volume, not the container's own disk.
        assert (config.data_dir, config.runs_dir, config.registry_dir) == tuple(
            Path(STORAGE, d) for d in ("data", "runs", "registry")
        )
        assert config.with_output_dir().output_dir.parent == Path(STORAGE, "runs")
        limit = ConcurrencyLimitConfig.model_validate(_deployment(name)["concurrency_limit"])
        assert (limit.limit, limit.collision_strategy) == (1, ConcurrencyLimitStrategy.CANCEL_NEW)
    local = _deployment("cifar10-local")
    assert not any(s.get("active", True) for s in local["schedules"])
    # The weekly sweep: off until turned on; its trials run on the trials deployment, whose runs
    # are not cancelled by a nightly limit, with the nightly config and no password in sight.
    sweep = _deployment("weekly-sweep")
    assert [s["active"] for s in sweep["schedules"]] == [False]
    flow = load_flow_from_entrypoint(sweep["entrypoint"])
    params = flow.validate_parameters(sweep["parameters"])
    assert params["config"] == TrainConfig(**_deployment(GPU_DEPLOYMENTS[0])["parameters"]["config"])
    assert params["sweep"].deployment == "train/cifar10-trials-k8s" and ":" not in params["sweep"].storage.split("@")[0][13:]
    assert "concurrency_limit" not in _deployment("cifar10-trials-k8s")
    for name in ("weekly-sweep", "cifar10-trials-k8s"):  # their pods can import Optuna
        install = _deployment(name)["pull"][1]["prefect.deployments.steps.run_shell_script"]["script"]
        assert install.startswith('pip install --quiet -e ".[sweep]"'), install
    assert TrainConfig(**local["parameters"]["config"]).accelerator == "cpu"
    # GPU runs clone the deployed commit (git_clone takes a branch or a commit, not both) and
    # install it; local runs use the checkout they were deployed from.
    (commit,) = spec["build"]
    step = commit["prefect.deployments.steps.run_shell_script"]
    assert step == {"id": "commit", "script": "git rev-parse HEAD", "stream_output": False}
    assert local["build"][0] == commit
    clone, install = spec["pull"]
    clone = clone["prefect.deployments.steps.git_clone"]
    assert clone["commit_sha"] == "{{ commit.stdout }}" and "branch" not in clone
    assert install["prefect.deployments.steps.run_shell_script"]["script"] == "pip install --quiet -e ."
    assert next(iter(local["pull"][0])) == "prefect.deployments.steps.set_working_directory"


def test_batch_predict_deployment_reads_and_writes_the_shared_storage():
    from prefect.flows import load_flow_from_entrypoint

    from cifar_lit.config import PredictConfig

    predict = _deployment("batch-predict")
    assert predict["entrypoint"] == "flows/predict_flow.py:predict_flow"
    assert predict["schedules"] == [] and "build" not in predict and "pull" not in predict
    limit = ConcurrencyLimitConfig.model_validate(predict["concurrency_limit"])
    assert (limit.limit, limit.collision_strategy) == (1, ConcurrencyLimitStrategy.ENQUEUE)  # requests queue
    # The Docker GPU pool: the host whose volume the nightly runs fill (CPU inference works too).
    assert predict["work_pool"] == _deployment("cifar10-nightly-docker")["work_pool"]
    assert predict["parameters"] == {
        "config": {
            "registry_dir": f"{STORAGE}/registry",
            "input": [f"{STORAGE}/incoming"],
            "output": f"{STORAGE}/predictions/predictions.csv",
        }
    }
    # The flow it names loads, and its parameters validate as the flow's own config.
    assert load_flow_from_entrypoint(str(REPO / predict["entrypoint"])).name == "predict"
    PredictConfig(**predict["parameters"]["config"])
    # The registry it reads is the one the nightly runs write.
    for name in GPU_DEPLOYMENTS:
        assert _deployment(name)["parameters"]["config"]["registry_dir"] == predict["parameters"]["config"]["registry_dir"]


def _rendered(template, event: dict):
    """``template`` (a trigger's parameters) with every Jinja string rendered for ``event``."""
    import jinja2

    if isinstance(template, dict):
        return {k: _rendered(v, event) for k, v in template.items()}
    if isinstance(template, list):
        return [_rendered(v, event) for v in template]
    return jinja2.Template(template).render(event=event) if isinstance(template, str) else template


def test_batch_predict_runs_on_each_promotion_into_the_volumes_registry(monkeypatch):
    monkeypatch.chdir(REPO)
    predict = _deployment("batch-predict")
    (trigger,) = predict["triggers"]
    assert trigger["enabled"] and trigger["expect"] == ["cifar_lit.model.promoted"]
    assert trigger["match"] == {"prefect.resource.id": "cifar_lit.model.*", "cifar_lit.registry": f"{STORAGE}/registry"}
    event = {"payload": {"name": "cifar10-airnet", "version": "v7", "registry": f"{STORAGE}/registry"}}
    flow = load_flow_from_entrypoint(predict["entrypoint"])
    config = flow.validate_parameters(_rendered(trigger["parameters"], event))["config"]
    assert (config.registry_dir, config.name, config.version) == (Path(STORAGE, "registry"), "cifar10-airnet", "v7")
    assert config.output == Path(STORAGE, "predictions", "cifar10-airnet-v7.csv")


def test_batch_predict_parameters_validate_against_the_flow(monkeypatch):
    monkeypatch.chdir(REPO)
    predict = _deployment("batch-predict")
    flow = load_flow_from_entrypoint(predict["entrypoint"])
    config = flow.validate_parameters(predict["parameters"])["config"]
    assert (config.alias, config.registry_dir) == ("production", Path(STORAGE, "registry"))
    assert config.input == [Path(STORAGE, "incoming")] and config.output == Path(STORAGE, "predictions", "predictions.csv")


# ---- on a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """`prefect server start` for this module; this process's client points at it."""
    with (
        prefect_server(tmp_path_factory.mktemp("prefect-server")) as api_url,
        temporary_settings(updates={PREFECT_API_URL: api_url}),
    ):
        yield api_url


@pytest.fixture(scope="module")
def env(api, tmp_path_factory) -> dict[str, str]:
    """The environment of CLI commands and workers (which their flow-run processes inherit)."""
    return cli_env(api, tmp_path_factory.mktemp("prefect-client"), PREFECT_WORKER_QUERY_SECONDS="2")


@pytest.fixture(scope="module")
def deployment(env, webhook) -> tuple[dict, set[str]]:
    """setup.sh (pools, notification block, automation), then `prefect deploy` of prefect.yaml:
    the deployments as registered, and the checkout's commit when deploy ran."""
    run_cli(["bash", str(DEPLOYMENTS / "setup.sh"), "--webhook-url", webhook.url], env)
    # Every deployment whose flow file exists: flows/predict_flow.py is still being written, and
    # `prefect deploy` imports each entrypoint. Once it exists this deploys all of them, as
    # `--all` does.
    names = [d["name"] for d in _spec()["deployments"] if (REPO / d["entrypoint"].split(":")[0]).is_file()]
    assert set(TRAIN_DEPLOYMENTS) <= set(names)
    commits = {_head()}  # before and after: others may commit to this checkout meanwhile
    by_name = [arg for name in names for arg in ("-n", name)]
    run_cli(["prefect", "--no-prompt", "deploy", *by_name, "--prefect-file", str(PREFECT_YAML)], env)
    commits.add(_head())
    with get_client(sync_client=True) as client:
        of_names = filters.DeploymentFilter(name=filters.DeploymentFilterName(any_=names))
        registered = client.read_deployments(deployment_filter=of_names)
    assert sorted(d.name for d in registered) == sorted(names)
    return {d.name: d for d in registered}, commits


@pytest.fixture(scope="module")
def deployed(deployment) -> dict:
    return deployment[0]


def _create_run(deployment, config: TrainConfig) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment.id, parameters={"config": config.model_dump(mode="json")})


def _wait_for_final(run_ids, worker, log: Path, timeout: float = RUN_TIMEOUT) -> list[FlowRun]:
    """The flow runs, once all are final; fails early when the worker is gone before."""
    deadline = time.monotonic() + timeout
    while True:
        worker_gone = worker.poll() is not None  # read first: a --run-once worker exits when done
        with get_client(sync_client=True) as client:
            runs = [client.read_flow_run(i) for i in run_ids]
        if all(r.state.is_final() for r in runs):
            return runs
        if worker_gone:
            raise AssertionError(f"worker exited {worker.returncode} first:\n{tail(log)}")
        if time.monotonic() > deadline:
            states = [(r.name, r.state.name) for r in runs]
            raise AssertionError(f"runs not final after {timeout}s: {states}\n{tail(log)}")
        time.sleep(1)


def _wait_for_runs_of(deployment, count: int, worker, log: Path, timeout: float = RUN_TIMEOUT) -> list[FlowRun]:
    """The first ``count`` flow runs of ``deployment``, once they exist and are final."""
    deadline = time.monotonic() + timeout
    of_deployment = filters.DeploymentFilter(id=filters.DeploymentFilterId(any_=[deployment.id]))
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=of_deployment)
        if len(runs) >= count:
            return _wait_for_final([r.id for r in runs], worker, log, timeout=max(1.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(runs)} runs of {deployment.name} after {timeout}s, expected {count}\n{tail(log)}")
        time.sleep(1)


def _of_run(flow_run_id) -> filters.FlowRunFilter:
    return filters.FlowRunFilter(id=filters.FlowRunFilterId(any_=[flow_run_id]))


def _task_runs(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=_of_run(flow_run_id))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def _artifacts(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(flow_run_filter=_of_run(flow_run_id))


@pytest.fixture(scope="module")
def pool_runs(deployed, env, archives, tmp_path_factory) -> dict:
    """Runs of cifar10-local on tiny CIFAR served from 127.0.0.1, all created at once and taken
    by one `prefect worker start` (the pool runs one at a time): "local" (the end-to-end and the
    browser tests look at it), "first" (with "local", the pool limit test; a registry each, as
    with a shared one the later run finds its config in production and skips training, leaving
    no overlap to check) and "bad" (a wrong checksum: the failure notification). Each value is
    (final flow run, its config); "log" is the worker's log."""
    tmp = tmp_path_factory.mktemp("pool-runs")
    server = fakes.FileServer({"/cifar10.tar.gz": archives["cifar10"]}).start()
    try:
        def config(name: str, **changes) -> TrainConfig:
            return TrainConfig(**{
                "data_dir": tmp / "data", "download_url": server.url("/cifar10.tar.gz"),
                "download_md5": fakes.md5(archives["cifar10"]), "val_size": 40, "batch_size": 16, "max_epochs": 1,
                "num_workers": 0, "accelerator": "cpu", "devices": 1, "prediction_samples": 4,
                "wandb_mode": "disabled", "output_dir": tmp / name, "registry_dir": tmp / f"{name}-home" / "registry",
                **changes})

        configs = {"local": config("local", wandb_mode="offline"), "first": config("first"),
                   "bad": config("bad", download_md5="0" * 32, data_dir=tmp / "bad-data")}
        for name in ("local", "first"):  # what predict-local classifies after their promotions
            fakes.image_folder(tmp / f"{name}-home" / "incoming", per_class=2)
        created = {name: _create_run(deployed["cifar10-local"], c) for name, c in configs.items()}
        log = tmp / "worker.log"
        with background(worker_args("local-process"), log, env=env, cwd=tmp) as worker:
            final = _wait_for_final([r.id for r in created.values()], worker, log, timeout=4 * RUN_TIMEOUT)
            # The two promotions started predict-local (its trigger): the same worker runs them.
            triggered = _wait_for_runs_of(deployed["predict-local"], 2, worker, log)
        return {name: (run, configs[name]) for name, run in zip(created, final, strict=True)} | {
            "log": log, "triggered": triggered}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_run(pool_runs):
    run, config = pool_runs["local"]
    return run, config, pool_runs["log"]


def test_setup_creates_the_pools_and_the_automation(deployed, webhook):
    with get_client(sync_client=True) as client:
        pools = {name: client.read_work_pool(name) for name in POOLS}
        (automation,) = client.read_automations_by_name("cifar-lit-training-failed")
    assert {name: pool.type for name, pool in pools.items()} == POOLS
    for name in ("gpu-kubernetes", "gpu-docker"):
        assert pools[name].base_job_template == _template(name)
    # No pool limit on the GPU pools, so that the nightly deployments' own limits see (and
    # cancel) a second run; the local pool queues its runs (tested below).
    limits = {name: pool.concurrency_limit for name, pool in pools.items()}
    assert limits == {"gpu-kubernetes": None, "gpu-docker": None, "local-process": 1}
    assert automation.enabled
    assert automation.trigger.expect >= {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    (action,) = automation.actions
    with get_client(sync_client=True) as client:
        webhook_block = client.read_block_document_by_name("cifar-lit-failures", "custom-webhook")
    assert action.type == "send-notification" and action.block_document_id == webhook_block.id
    # The webhook URL is a secret of the block: masked in what the API (and the UI) shows.
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name("cifar-lit-failures", "custom-webhook", include_secrets=False)
    assert shown.data["url"] == "{{webhook_url}}"
    assert webhook.url not in shown.model_dump_json() and webhook.url in webhook_block.model_dump_json()


def test_rerunning_the_alert_setup_with_an_existing_block_replaces_the_automation(deployed, env):
    # --block: a notification block made in the UI; here, the webhook block setup.sh saved.
    run_cli(["python", str(DEPLOYMENTS / "notify_on_failure.py"), "--block", "custom-webhook/cifar-lit-failures"], env)
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name("cifar-lit-training-failed")
        webhook_block = client.read_block_document_by_name("cifar-lit-failures", "custom-webhook")
    assert automation.actions[0].block_document_id == webhook_block.id


def test_deploy_registers_gpu_schedules_with_cron_and_timezone(deployed):
    berlin = ZoneInfo("Europe/Berlin")
    for name in GPU_DEPLOYMENTS:
        deployment = deployed[name]
        (schedule,) = deployment.schedules
        assert schedule.active
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
        assert deployment.parameters == _deployment(name)["parameters"]
        assert deployment.job_variables["gpu_count"] == 1
        # The server's scheduler turns the schedule into runs at 02:00 Berlin time.
        of_deployment = filters.DeploymentFilter(id=filters.DeploymentFilterId(any_=[deployment.id]))
        deadline = time.monotonic() + 120
        while True:
            with get_client(sync_client=True) as client:
                scheduled = client.read_flow_runs(deployment_filter=of_deployment)
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert scheduled, f"no runs scheduled for {name}"
        for run in scheduled:
            assert run.state.is_scheduled() and run.expected_start_time > datetime.now(berlin)
            start = run.expected_start_time.astimezone(berlin)
            assert (start.hour, start.minute) in {(2, 0), (3, 0)}  # 03:00: the night clocks go forward
    local = deployed["cifar10-local"]
    assert not any(s.active for s in local.schedules)
    # The checkout `prefect deploy` ran in, recorded by the build step.
    assert local.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]


def test_deploy_records_the_checkout_commit_as_version(deployment, tmp_path, monkeypatch):
    deployed, commits = deployment
    (commit,) = {d.version for d in deployed.values()}  # the same commit for all of them
    assert commit in commits and len(commit) == 40, commit
    assert deployed.keys() >= set(TRAIN_DEPLOYMENTS)
    for name in GPU_DEPLOYMENTS:
        # GPU runs clone exactly that commit, whatever has been pushed since.
        (clone, _install) = deployed[name].pull_steps
        step = clone["prefect.deployments.steps.git_clone"]
        assert step["commit_sha"] == commit and "branch" not in step, step
    # Run the registered clone step, as a run's first pull step, against this repository.
    monkeypatch.chdir(tmp_path)
    step = {**step, "repository": REPO.as_uri()}
    outputs = asyncio.run(run_steps([{"prefect.deployments.steps.git_clone": step}]))
    checkout = tmp_path / outputs["clone"]["directory"]
    cloned = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True)
    assert cloned.stdout.strip() == commit


def test_nightly_deployments_cancel_a_run_while_one_is_going(deployed):
    for name in GPU_DEPLOYMENTS:
        deployment = deployed[name]
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        assert deployment.concurrency_options.grace_period_seconds == 1800
    # What a worker does with each run it picks up (it proposes Pending before it starts any
    # infrastructure), for two runs of the Kubernetes deployment, and one after the first ends.
    deployment = deployed["cifar10-nightly-k8s"]
    runs = []
    with get_client(sync_client=True) as client:
        try:
            for _ in range(3):
                runs.append(client.create_flow_run_from_deployment(deployment.id))
            first, second, third = (r.id for r in runs)
            assert {r.deployment_version for r in runs} == {deployment.version}  # each run shows the commit
            assert propose_state_sync(client, Pending(), flow_run_id=first).is_pending()
            state = propose_state_sync(client, Pending(), flow_run_id=second)
            assert state.is_cancelled() and state.message == "Deployment concurrency limit reached."
            assert client.read_flow_run(second).state.is_cancelled()  # not queued: it never runs
            propose_state_sync(client, Running(), flow_run_id=first)
            propose_state_sync(client, Completed(), flow_run_id=first)
            assert propose_state_sync(client, Pending(), flow_run_id=third).is_pending()  # the slot is free again
        finally:
            for run in runs:  # the schedule test expects only the scheduler's runs
                if not client.read_flow_run(run.id).state.is_final():
                    propose_state_sync(client, Cancelled(), flow_run_id=run.id, force=True)
                client.delete_flow_run(run.id)


def _train_run_named(name: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=filters.FlowRunFilter(name=filters.FlowRunFilterName(any_=[name])))
    return run


@pytest.mark.slow
def test_a_second_pod_finds_the_nightly_cache_on_the_volume(api, env, archives, tmp_path):
    """The pods' environment, as the Kubernetes template renders it, keeps Prefect's results on
    the volume: a second pod (another process, another home, the same volume) finds the first
    one's download and split Cached. A pod whose results stay in its home finds nothing."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config, _, _ = _render(KubernetesWorkerJobConfiguration, "cifar10-nightly-k8s")
    (container,) = config.job_manifest["spec"]["template"]["spec"]["containers"]
    rendered = {e["name"]: e["value"] for e in container["env"]}
    assert rendered["PREFECT_LOCAL_STORAGE_PATH"].startswith(STORAGE + "/")
    volume = tmp_path / "volume"  # stands in for /mnt/cifar-lit
    on_volume = {"PREFECT_LOCAL_STORAGE_PATH": rendered["PREFECT_LOCAL_STORAGE_PATH"].replace(STORAGE, str(volume))}
    server = fakes.FileServer({"/cifar10.tar.gz": archives["cifar10"]}).start()
    args = ["--data-dir", str(volume / "data"), "--runs-dir", str(volume / "runs"), "--download-url",
            server.url("/cifar10.tar.gz"), "--download-md5", fakes.md5(archives["cifar10"]), "--recipe", "seed",
            "--max-epochs", "1", "--val-size", "40", "--batch-size", "16", "--num-workers", "0", "--accelerator", "cpu",
            "--prediction-samples", "0", "--wandb-mode", "disabled"]

    def pod(name: str, extra: dict[str, str]) -> dict[str, str]:
        home = tmp_path / name / "home"
        pod_env = {k: v for k, v in env.items() if k != "PREFECT_LOCAL_STORAGE_PATH"}  # the test session sets one
        pod_env |= {"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), **extra}
        before = set((volume / "runs").glob("*")) if (volume / "runs").is_dir() else set()
        run_cli([sys.executable, "flows/train_flow.py", *args], pod_env, timeout=RUN_TIMEOUT)
        (out,) = set((volume / "runs").glob("*")) - before - {volume / "runs" / "registry"}  # named after the run
        return {name: r.state.name for name, r in _task_runs(_train_run_named(out.name).id).items()}

    try:
        first = pod("pod-a", on_volume)
        second = pod("pod-b", on_volume)
        alone = pod("pod-c", {})  # results in its own home, as before
    finally:
        server.stop()
    assert (first["download"], first["split"]) == ("Completed", "Completed") and "fit" in first
    assert (second["download"], second["split"]) == ("Cached", "Cached") and "fit" not in second  # skipped: unchanged
    assert (alone["download"], alone["split"]) == ("Completed", "Completed")
    assert list((volume / "prefect-results").iterdir())


@pytest.mark.slow
def test_local_deployment_runs_end_to_end_on_a_worker(local_run):
    run, config, log = local_run
    assert run.state.is_completed(), f"{run.state}\n{tail(log)}"
    tasks = _task_runs(run.id)
    assert {name: task.state.name for name, task in tasks.items()} == dict.fromkeys(TASKS, "Completed")
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["config"]["max_epochs"] == 1 and summary["wandb"]["mode"] == "offline"
    prefix = f"cifar10-{family(summary['config']['model'])}".replace("_", "-")  # the registry name: the family
    artifacts = {a.key.removeprefix(f"{prefix}-"): a for a in _artifacts(run.id)}
    assert artifacts.keys() == {"summary", "per-class", "progress", "promotion"}
    assert artifacts["summary"].type == "markdown" and f"{summary['test_acc']:.4f}" in artifacts["summary"].data
    rows = artifacts["per-class"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [r["class"] for r in rows] == fakes.CIFAR10_CLASSES


REQUIRE_BROWSER = "CIFAR_LIT_REQUIRE_BROWSER"  # set (not "0"): no browser fails the UI test instead of skipping it


def find_browser() -> tuple[str, str]:
    """The ``chromium`` and ``chromedriver`` executables on PATH for the Prefect UI test. Where
    either is missing the test skips, naming what is missing and how to install it; with
    CIFAR_LIT_REQUIRE_BROWSER=1 (as .ci/run sets) it fails with the same message, so CI can never
    silently stop running it."""
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return found["chromium"], found["chromedriver"]
    message = (
        f"the Prefect UI test needs headless Chromium and its driver: no {' and no '.join(missing)} on PATH; "
        "install them with `apt-get install chromium chromium-driver`"
    )
    if os.environ.get(REQUIRE_BROWSER, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_BROWSER} is set: the UI test must run)", pytrace=False)
    pytest.skip(f"{message} (set {REQUIRE_BROWSER}=1 to make this a failure)")


def test_no_browser_skips_naming_what_is_missing_or_fails_where_required(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(REQUIRE_BROWSER, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        find_browser()
    assert "no chromium and no chromedriver on PATH" in str(skipped.value)
    assert "apt-get install chromium chromium-driver" in str(skipped.value)
    monkeypatch.setenv(REQUIRE_BROWSER, "0")  # 0: not required
    with pytest.raises(pytest.skip.Exception):
        find_browser()
    monkeypatch.setenv(REQUIRE_BROWSER, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        find_browser()
    assert "no chromium and no chromedriver on PATH" in str(failed.value)
    assert "apt-get install chromium chromium-driver" in str(failed.value)
    # Only the driver missing: the message names just it.
    (empty / "chromium").write_text("#!/bin/sh\n")
    (empty / "chromium").chmod(0o755)
    with pytest.raises(pytest.fail.Exception, match="no chromedriver on PATH") as failed:
        find_browser()
    assert "no chromium " not in str(failed.value)
    (empty / "chromedriver").write_text("#!/bin/sh\n")
    (empty / "chromedriver").chmod(0o755)
    assert find_browser() == (str(empty / "chromium"), str(empty / "chromedriver"))


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """Module-scoped and first in the test's arguments: without a browser the test skips (or
    fails) before a Prefect server and a flow run are started for it."""
    return find_browser()


def _chromium(user_data_dir: Path, chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1400,1300",
    ):
        options.add_argument(arg)
    # An explicit driver, so Selenium Manager never tries to download one.
    return webdriver.Chrome(service=Service(chromedriver), options=options)


@pytest.mark.slow
def test_flow_run_page_shows_tasks_and_artifacts_in_chromium(browser_paths, api, local_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run, _, _ = local_run
    artifact_keys = [a.key for a in _artifacts(run.id)]
    browser = _chromium(tmp_path / "chromium-profile", *browser_paths)
    shown = {}
    try:
        browser.set_page_load_timeout(120)
        browser.get(f"{api.removesuffix('/api')}/runs/flow-run/{run.id}")
        wait = WebDriverWait(browser, 120, poll_frequency=0.5)
        wait.until(lambda b: run.name in b.find_element(By.TAG_NAME, "body").text)
        for tab, expected in (("task-runs", [f"{t}-" for t in TASKS]), ("artifacts", artifact_keys)):
            wait.until(lambda b, tab=tab: b.find_elements(By.ID, tab))[0].click()  # the tab's title

            def panel(b, tab=tab) -> str:
                found = b.find_elements(By.ID, f"{tab}-content")
                return found[0].text if found else ""

            wait.until(lambda b, panel=panel, expected=expected: all(e in panel(b) for e in expected))
            shown[tab] = panel(browser)
            browser.save_screenshot(str(tmp_path / f"flow-run-{tab}.png"))
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))  # what the page showed instead
        raise
    finally:
        browser.quit()
    assert shown["task-runs"].count("Completed") >= len(TASKS)
    assert all(key in shown["artifacts"] for key in artifact_keys) and len(artifact_keys) == 4
    for tab in shown:
        assert (tmp_path / f"flow-run-{tab}.png").stat().st_size > 10_000  # a rendered page, not a blank
        if docs := os.environ.get("CIFAR_LIT_SCREENSHOT_DIR"):  # how docs/ got its screenshots
            shutil.copy(tmp_path / f"flow-run-{tab}.png", Path(docs) / f"prefect-flow-run-{tab}.png")


@pytest.mark.slow
def test_pool_concurrency_limit_runs_one_training_at_a_time(pool_runs):
    # local-process has a pool limit of 1 (see above): runs created together must not overlap,
    # whichever the worker picks first, and all run (queued, not cancelled).
    runs = [pool_runs[name][0] for name in ("local", "first")]
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    by_start = sorted(runs, key=lambda r: r.start_time)
    for first, second in zip(by_start, by_start[1:]):
        assert first.end_time <= second.start_time
        assert _task_runs(first.id)["fit"].end_time <= _task_runs(second.id)["fit"].start_time


@pytest.mark.slow
@pytest.mark.slow
def test_a_promotion_runs_batch_predictions_with_the_new_version(pool_runs):
    """promote -> the cifar_lit.model.promoted event -> predict-local's trigger -> a predict run of
    that very version, on the worker, writing its CSV beside the registry."""
    runs = pool_runs["triggered"]
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]
    by_registry = {r.parameters["config"]["registry_dir"]: r for r in runs}
    for name in ("local", "first"):
        train_run, config = pool_runs[name]
        summary = json.loads((config.out / "summary.json").read_text())
        assert summary["promotion"]["promoted"] and summary["promotion"]["version"] == "v1"
        run = by_registry[str(config.registry.resolve())]
        home = config.registry.parent
        assert run.parameters["config"]["name"] == config.model_name() and run.parameters["config"]["version"] == "v1"
        assert run.start_time >= _task_runs(train_run.id)["promote"].end_time  # started by the promotion
        csv = home / "predictions" / f"{config.model_name()}-v1.csv"
        rows = list(csv_module.DictReader(csv.open()))
        assert len(rows) == 6 and all(r["prediction"] and not r["error"] for r in rows)  # incoming/: 3 classes x 2
    with get_client(sync_client=True) as client:
        events = client.read_events(filter=EventFilter(event=EventNameFilter(name=["cifar_lit.model.promoted"])), limit=50).events
    promoted = [e for e in events if e.resource.get("cifar_lit.registry") in by_registry]
    assert len(promoted) == 2 and {e.payload["version"] for e in promoted} == {"v1"}
    assert all(e.resource["cifar_lit.version"] == "v1" for e in promoted)


def test_failed_run_sends_a_notification(pool_runs, webhook):
    run, _ = pool_runs["bad"]
    assert run.state.is_failed()
    deadline = time.monotonic() + 120  # events reach the automation asynchronously
    while not webhook.bodies and time.monotonic() < deadline:
        time.sleep(1)
    (body,) = webhook.bodies
    text = body["text"]
    assert text.startswith(f"Training run {run.name} Failed\ncifar10-local: flow run {run.name} ended Failed.")
    assert "checksum mismatch" in text and text.endswith(f"/runs/flow-run/{run.id}")


def test_a_sweep_runs_its_trials_as_runs_of_a_train_deployment(deployed, env, archives, tmp_path):
    """--deployment: each trial is a run of the train deployment on its work pool (the path the
    weekly sweep takes), reporting to the study from the worker's process and linked to the
    sweep's flow run; the best one then goes through the gate as in-process trials do."""
    server = fakes.FileServer({"/cifar10.tar.gz": archives["cifar10"]}).start()
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 0.005, "high": 0.05, "log": True}}))
    # From the command line, as a user starts it, against this module's server.
    args = [sys.executable, "flows/sweep_flow.py", "--trials", "1", "--study", "d", "--storage",
            f"sqlite:///{tmp_path / 'study.db'}", "--space", str(tmp_path / "space.json"), "--pruner", "none",
            "--sampler", "random", "--deployment", "train/cifar10-local", "--data-dir", str(tmp_path / "data"),
            "--download-url", server.url("/cifar10.tar.gz"), "--download-md5", fakes.md5(archives["cifar10"]),
            "--val-size", "40", "--batch-size", "16", "--max-epochs", "2", "--num-workers", "0", "--accelerator",
            "cpu", "--devices", "1", "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "sweep"),
            "--runs-dir", str(tmp_path / "runs")]
    log = tmp_path / "worker.log"
    try:
        with background(worker_args("local-process"), log, env=env, cwd=tmp_path):
            run_cli(args, env, timeout=RUN_TIMEOUT)
    finally:
        server.stop()
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=filters.FlowRunFilter(
            name=filters.FlowRunFilterName(any_=["d-trial-0000"])))
    assert len(runs) == 1 and {r.deployment_id for r in runs} == {deployed["cifar10-local"].id}
    assert all(r.parent_task_run_id is not None for r in runs)  # children of the sweep's run
    for trial in study.trials:
        summary = json.loads((tmp_path / "sweep" / "trials" / f"trial-{trial.number:04d}" / "summary.json").read_text())
        assert summary["config"]["lr"] == pytest.approx(trial.params["lr"]) and summary["trial"]["number"] == trial.number
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert result["best"]["trial"] == study.best_trial.number and result["promotion"]["promoted"] is True
