"""The production configuration loads: Definitions on the Kubernetes executor with GPU requests on
heavy steps, an instance on PostgreSQL with queued runs launched as Kubernetes jobs, and the
Kubernetes jobs dagster-k8s would create for a step: built here with dagster-k8s's own functions
(the executor from its configured definition, the run launcher from deploy/dagster.yaml, the
step's tags, ``construct_dagster_k8s_job``), the same path ``K8sStepHandler.launch_step`` takes."""

import importlib.util
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.config import dagster_instance_config

from assets import models

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_production_definitions_module():
    spec = importlib.util.spec_from_file_location("production_definitions", DEPLOY / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_production_definitions() -> dg.Definitions:
    return load_production_definitions_module().defs


def test_production_definitions_run_training_on_kubernetes_with_a_gpu():
    defs = load_production_definitions()
    dg.Definitions.validate_loadable(defs)
    for name in ("all_assets", "training", "evaluation", "retrain_and_evaluate"):
        assert defs.resolve_job_def(name).executor_def.name == "k8s"
    assert defs.resolve_job_def("ingestion").executor_def.name != "k8s"
    pod = json.loads(models.vae.op.tags["dagster-k8s/config"])
    gpu = pod["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == "1"
    assert "dagster-k8s/config" not in models.latents.op.tags  # light steps need no GPU
    schedule = defs.resolve_schedule_def("weekly_retraining")
    assert schedule.job_name == "retrain_and_evaluate"


def test_production_instance_config_uses_postgres_and_the_k8s_run_launcher(tmp_path):
    config, _ = dagster_instance_config(str(DEPLOY))  # validated against the instance schema
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}  # no secrets in files
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    broken = tmp_path / "dagster.yaml"
    broken.write_text((DEPLOY / "dagster.yaml").read_text().replace("default_limit", "default_limmit"))
    with pytest.raises(dg.DagsterInvalidConfigError):  # the validation is real
        dagster_instance_config(str(tmp_path))
    script = (DEPLOY / "mlflow-server.sh").read_text()
    assert "--backend-store-uri" in script and "--artifacts-destination" in script


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def production_launcher(tmp_path, monkeypatch):
    """deploy/dagster.yaml's K8sRunLauncher, its config validated and its env resolved as the
    instance would; pointed at a kubeconfig that is never dialled (nothing here talks to a cluster)."""
    import yaml
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    monkeypatch.setenv("DAGSTER_K8S_NAMESPACE", "cxr")
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    launcher = {**launcher, "load_incluster_config": False, "kubeconfig_file": str(tmp_path / "kubeconfig")}
    processed = process_config(K8sRunLauncher.config_type(), launcher)
    assert processed.success, processed.errors
    return K8sRunLauncher.from_config_value(None, processed.value)


def step_job(defs: dg.Definitions, launcher, job_name: str, asset: str) -> dict:
    """The Kubernetes job the executor of ``job_name`` would launch for ``asset``'s step."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    job = defs.resolve_job_def(job_name)
    config = job.executor_def.apply_config_mapping({}).value["config"]
    executor = K8sContainerContext(  # as k8s_job_executor reads its config
        image_pull_policy=config.get("image_pull_policy"),
        env_secrets=config.get("env_secrets"),
        env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"),
        volumes=config.get("volumes"),
        resources=config.get("resources"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})),
    )
    run = DagsterRun(job_name=job_name, run_id="0123abcd-0000-0000-0000-000000000000")
    node = job.graph.node_named(asset)
    context = (
        K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
        .merge(executor)
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(node.definition.tags)))
    )
    built = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(config.get("job_image"), launcher),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{asset}",
        pod_name=f"dagster-step-{asset}",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job_name, "dagster/op": asset},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": asset}],
    )
    return built.to_dict()


@pytest.mark.parametrize(
    "job_name, asset",
    [
        ("all_assets", "class_ddpm"),
        ("all_assets", "generation_evaluation"),
        ("retrain_and_evaluate", "vae"),
        ("all_assets", "latents"),
    ],
)
def test_every_step_pod_mounts_the_shared_work_folder_with_the_image_and_secrets(
    tmp_path, monkeypatch, job_name, asset
):
    deploy = load_production_definitions()
    launcher = production_launcher(tmp_path, monkeypatch)
    job = step_job(deploy, launcher, job_name, asset)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "cxr-pipeline:latest"
    mounts = {m["name"]: m["mount_path"] for m in container["volume_mounts"]}
    assert mounts["cxr-work"] == "/data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cxr-work"]["persistent_volume_claim"]["claim_name"] == "cxr-work"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CXR_HOME"] == "/data" and env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    secrets = [source["secret_ref"]["name"] for source in container["env_from"] if source.get("secret_ref")]
    assert secrets == ["cxr-pipeline-secrets"]
    assert pod["security_context"]["run_as_user"] == 10001 and pod["security_context"]["fs_group"] == 10001
    limits = (container.get("resources") or {}).get("limits") or {}
    heavy = "cxr/compute" in deploy.resolve_job_def(job_name).graph.node_named(asset).definition.tags
    assert (limits.get("nvidia.com/gpu") == "1") == heavy  # training and evaluation steps get a GPU, light ones none
    assert container["resources"]["requests"]["cpu"] == "2"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"


def test_the_run_worker_mounts_the_same_volume(tmp_path, monkeypatch):
    launcher = production_launcher(tmp_path, monkeypatch)
    assert {"name": "cxr-work", "mount_path": "/data"} in [dict(m) for m in launcher.volume_mounts]
    assert launcher.volumes[0]["persistent_volume_claim"]["claim_name"] == "cxr-work"
    assert "CXR_HOME=/data" in launcher.env_vars


def test_helm_values_manifests_and_image_agree_with_the_instance_and_definitions():
    import yaml

    deploy = load_production_definitions_module()
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    helm_launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == instance_class() == "K8sRunLauncher"
    assert [s["name"] for s in helm_launcher["envSecrets"]] == instance["env_secrets"] == [deploy.SECRETS]
    assert helm_launcher["envVars"] == instance["env_vars"] == [f"CXR_HOME={deploy.WORK_MOUNT}"]
    assert helm_launcher["volumeMounts"] == [{"name": "cxr-work", "mountPath": deploy.WORK_MOUNT}]
    assert helm_launcher["volumes"][0]["persistentVolumeClaim"]["claimName"] == deploy.WORK_CLAIM
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["--python-file", "/opt/cxr/deploy/definitions.py"]
    assert code["volumeMounts"] == helm_launcher["volumeMounts"] and code["volumes"] == helm_launcher["volumes"]
    assert {"name": "CXR_HOME", "value": deploy.WORK_MOUNT} in code["env"]
    python_logs = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["python_logs"]
    assert values["pythonLogs"]["managedPythonLoggers"] == python_logs["managed_python_loggers"] == ["cxr_pipeline"]
    claim = yaml.safe_load((DEPLOY / "k8s" / "work-volume.yaml").read_text())
    assert claim["metadata"]["name"] == deploy.WORK_CLAIM and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    secrets = {
        s["metadata"]["name"]: s for s in yaml.safe_load_all((DEPLOY / "k8s" / "secrets.example.yaml").read_text())
    }
    needed = {"DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB", "MLFLOW_TRACKING_URI"}
    assert needed <= set(secrets[deploy.SECRETS]["stringData"])
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    assert "COPY deploy /opt/cxr/deploy" in dockerfile and "USER 10001" in dockerfile
    assert "ENV CXR_HOME=/data" in dockerfile and f"--uid {deploy.IMAGE_USER}" in dockerfile


def instance_class() -> str:
    import yaml

    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["class"]
