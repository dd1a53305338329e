"""Security: hostile names, planted secrets, prompt injection, pickle/remote-code model loading, loopback binding."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rel_helpers import REPO, LoopbackLLM, OwnS3Server, child_env
from rel_world import INJECTION, brain, judge_rows, mc_rows, world_rollouts

from prmforge.names import InvalidNameError, validate_name
from prmforge.storage import Storage

HOSTILE_NAMES = ["..", "../etc", "a/../../b", "a/b", "/abs", "a\\b", "..\\..\\win", "x\x00y", "x\ny", "tab\tname",
                 "esc\x1b[31m", "", "a" * 65, "a" * 5000, "UPPER", " lead", "ok..ok", ".hidden", "-dash", "ümlaut",
                 "a:b", "a;rm -rf"]


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_hostile_names_refused_before_paths(tmp_path: Path, fault) -> None:
    from prmforge.registry import RegistryError, add_dataset, load_registry

    root = tmp_path / "store"
    root.mkdir()
    before = _files_under(tmp_path)
    store = Storage(root.as_uri())
    table = pa.table({"x": [1]})
    refused = {"validate_name": 0, "storage_dataset": 0, "storage_partition": 0, "storage_shard": 0, "registry": 0}
    registry = tmp_path / "datasets.yaml"
    for name in HOSTILE_NAMES:
        with pytest.raises(InvalidNameError):
            validate_name(name)
        refused["validate_name"] += 1
        with pytest.raises(InvalidNameError):
            store.write_dataset(name, table)
        with pytest.raises(InvalidNameError):
            store.dataset_url(name)
        refused["storage_dataset"] += 1
        with pytest.raises(InvalidNameError):
            store.write_dataset("ok_dataset", table, partition=name)
        with pytest.raises(InvalidNameError):
            store.read_dataset("ok_dataset", name)
        refused["storage_partition"] += 1
        with pytest.raises(InvalidNameError):
            store.write_shard("ok_dataset", name, "run", 0, table)
        with pytest.raises(InvalidNameError):
            store.write_shard("ok_dataset", "p", name, 0, table)
        refused["storage_shard"] += 1
        with pytest.raises(RegistryError):
            add_dataset(name, "world", path=registry)
        refused["registry"] += 1
    # a hand-edited registry with a hostile key is refused as a whole, not half-loaded
    registry.write_text("datasets:\n  '../evil':\n    source: world\n")
    with pytest.raises((RegistryError, ValueError)):
        load_registry(registry)
    assert _files_under(tmp_path) - before <= {"datasets.yaml"}  # nothing written anywhere
    fault(f"{len(HOSTILE_NAMES)} hostile dataset/partition/run-key names (`..`, `/`, `\\`, NUL, newline, ESC, "
          "empty, 65 and 5000 chars, upper case, leading dot/dash/space, non-ASCII, `:` `;`)",
          len(HOSTILE_NAMES) * 8 + 1, "each refused by validate_name, Storage (dataset, partition, shard dataset/"
          "run key, URL), registry add_dataset and a hand-edited registry; no file created",
          **{f"refused_{k}": v for k, v in refused.items()}, registry_with_bad_key_refused=True,
          files_created=len(_files_under(tmp_path) - before - {"datasets.yaml"}))


def test_sensor_and_partition_keys_refused(tmp_path: Path, fault) -> None:
    from dagster import DagsterInstance, build_sensor_context, materialize

    from assets.seed import seed_problems
    from pipelines.sensors import new_dataset_sensor, scan_incoming
    from resources import build_resources
    from resources.storage import StorageResource

    root = tmp_path / "store"
    incoming = root / "incoming"
    bad_folders = ["UPPER", "a b", "x\ny", "a\\b", "-dash", "a" * 200, "ümlaut"]
    for name in bad_folders + ["good-one"]:
        (incoming / name).mkdir(parents=True)
        (incoming / name / "p.jsonl").write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}))
    os.utime(incoming / "good-one" / "p.jsonl", (1, 1))
    for name in bad_folders:
        os.utime(incoming / name / "p.jsonl", (1, 1))
    store = Storage(root.as_uri())
    files, problems = scan_incoming(store)
    assert {f.dataset for f in files} == {"good-one"}
    assert len(problems) == len(bad_folders)
    registry = tmp_path / "reg.yaml"
    os.environ["PRMFORGE_REGISTRY"] = str(registry)
    try:
        with DagsterInstance.ephemeral() as instance:
            ctx = build_sensor_context(instance=instance, resources={"storage": StorageResource(root=root.as_uri())})
            result = new_dataset_sensor(ctx)
            keys = [r.partition_key for r in result.run_requests]
            assert "good-one" in keys and not set(keys) & set(bad_folders)  # (+ built-in registry entries)
            # A partition key that slipped into Dagster still never becomes a path.
            evil = "../../escaped"
            instance.add_dynamic_partitions("datasets", [evil])
            res = materialize([seed_problems], partition_key=evil, instance=instance, raise_on_error=False,
                              resources=build_resources(storage=StorageResource(root=root.as_uri())))
            assert not res.success
    finally:
        os.environ.pop("PRMFORGE_REGISTRY", None)
    assert not (tmp_path / "escaped").exists() and not (root.parent.parent / "escaped").exists()
    assert not any("escaped" in p for p in _files_under(tmp_path))
    fault("hostile folder names under incoming/ (new_dataset_sensor) and a `../../escaped` Dagster partition key",
          len(bad_folders) + 1, "sensor requests runs only for the valid folder and reports each bad one; the "
          "materialisation with the traversal key fails before any path is written", bad_folders=len(bad_folders),
          sensor_problems_reported=len(problems), run_requests_for_bad_folders=len(set(keys) & set(bad_folders)), traversal_materialisation_failed=True)


def test_cli_add_dataset_refuses_bad_names(tmp_path: Path, fault) -> None:
    registry = tmp_path / "datasets.yaml"
    refused = 0
    for name in ["../evil", "a/b", "a\\b", "x" * 300]:
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "add-dataset", name, "--source", "world"],
                              cwd=REPO, env=child_env(PRMFORGE_REGISTRY=str(registry)), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        refused += 1
    assert not registry.exists() or "evil" not in registry.read_text()
    fault("`prmforge add-dataset` with hostile names", refused, "non-zero exit with a message, no traceback, "
          "registry unchanged", refused=refused)


# ---------------------------------------------------------------------------
# planted secrets
# ---------------------------------------------------------------------------
S3_SECRET = "PLANTEDs3SECRETkey0123456789abcdefXYZ"
API_KEY = "sk-PLANTED-apikey-9f8e7d6c5b4a"


def _parquet_text(data: bytes) -> str:
    try:
        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    except Exception:  # noqa: BLE001 - not a parquet file: scan the bytes as text
        return data.decode("utf-8", "replace")


def test_planted_secrets_never_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd, caplog, fault) -> None:
    import boto3
    import mlflow
    from dagster import DagsterInstance, materialize

    from assets.labels import consensus_labels, judge_step_labels, mc_step_labels
    from assets.rollouts import policy_rollouts
    from assets.seed import seed_problems
    from prmforge.registry import add_dataset
    from resources import build_resources
    from resources.engine import EngineResource
    from resources.judge import JudgeResource
    from resources.storage import StorageResource

    s3 = OwnS3Server()
    s3.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "PLANTEDaccess")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("PRMFORGE_S3_ENDPOINT_URL", s3.endpoint)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").create_bucket(Bucket="secrets-run")
        root = "s3://secrets-run/root"
        registry = tmp_path / "datasets.yaml"
        add_dataset("sec", "world", path=registry)
        caplog.set_level(logging.DEBUG)
        from prmforge.world import generate_problems

        golds = {p.problem: str(p.answer) for p in generate_problems(400, seed=0)}
        respond = brain(golds)

        def respond_or_echo(prompt: str, i: int) -> str:
            return respond(prompt, i) if prompt.split("\nSolution:\n")[0].removeprefix("Problem: ") in golds \
                or "<step_0>" in prompt else "The answer is 0."

        with LoopbackLLM(respond_or_echo) as llm:
            # the first requests fail with a 500 whose body echoes the caller's credentials (some proxies do)
            llm.faults[""] = ["echo"] * 4
            engine = EngineResource(backend="openai", model="policy", base_url=llm.base_url, max_retries=3,
                                    timeout_s=10)
            judge = JudgeResource(kind="llm", backend="openai", model="judge", base_url=llm.base_url, max_retries=3)
            resources = build_resources(storage=StorageResource(root=root), policy_engine=engine, judge=judge)
            assets = [seed_problems, policy_rollouts, mc_step_labels, judge_step_labels, consensus_labels]
            with DagsterInstance.ephemeral() as instance:
                instance.add_dynamic_partitions("datasets", ["sec"])
                res = materialize(assets, partition_key="sec", instance=instance, resources=resources,
                                  run_config={"ops": {"seed_problems": {"config": {"registry_path": str(registry)}}}})
                assert res.success
                logs = [json.dumps(e.to_json() if hasattr(e, "to_json") else str(e), default=str)
                        for e in instance.all_logs(res.run_id)]
                run_config = json.dumps(instance.get_run_by_id(res.run_id).run_config, default=str)
                metadata = [json.dumps({k: str(v.value) for k, v in m.metadata.items()})
                            for m in res.get_asset_materialization_events()
                            for m in [m.materialization]]
            auth_headers = {r["headers"].get("Authorization") for r in llm.requests}
            served = dict(llm.served)
        assert auth_headers == {f"Bearer {API_KEY}"}  # the key was really used ...
        out, err = capfd.readouterr()
        # ... and the S3 secret too: objects were written with it
        client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        objects = [o["Key"] for o in client.list_objects_v2(Bucket="secrets-run").get("Contents", [])]
        assert any(k.endswith("datasets/consensus_labels/sec/data.parquet") for k in objects)
        stored = [_parquet_text(client.get_object(Bucket="secrets-run", Key=k)["Body"].read()) for k in objects]
        mlf = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
        runs = [r for e in mlf.search_experiments() for r in mlf.search_runs([e.experiment_id])]
        assert runs, "the stages logged no MLflow runs"
        tracked = [json.dumps({"params": r.data.params, "tags": r.data.tags, "metrics": list(r.data.metrics)})
                   for r in runs]
        py_logs = [rec.getMessage() for rec in caplog.records]
    finally:
        s3.stop()
    haystacks = {"stdout": [out], "stderr": [err], "python_logs": py_logs, "dagster_event_log": logs,
                 "run_config": [run_config], "materialisation_metadata": metadata, "mlflow_params_tags": tracked,
                 "stored_objects": stored}
    leaks = {name: sum(1 for text in texts for secret in (S3_SECRET, API_KEY) if secret in text)
             for name, texts in haystacks.items()}
    assert not any(leaks.values()), leaks
    fault("planted S3 secret key and OpenAI API key in the environment; a real run of seed_problems -> "
          "policy_rollouts -> mc_step_labels -> judge_step_labels -> consensus_labels (openai engine and judge on "
          "a loopback server; the first 4 requests answered 500 with the Authorization header echoed in the body) on a moto S3 root", 2,
          "neither secret appears in stdout, stderr, Python log records (DEBUG), Dagster event log, run config, "
          "materialisation metadata, MLflow params/tags, or any stored object (Parquet decoded)",
          requests_sent=sum(served.values()), distinct_authorization_headers=len(auth_headers), responses_served=served,
          stored_objects_scanned=len(stored), mlflow_runs_scanned=len(runs), dagster_events_scanned=len(logs),
          python_log_records_scanned=len(py_logs), leaks=sum(leaks.values()))


# ---------------------------------------------------------------------------
# prompt injection
# ---------------------------------------------------------------------------
def _consensus(rollouts, mc_results, verdicts) -> tuple[dict[str, int], dict[str, int]]:
    from prmforge.labeling.consensus import build_consensus

    res = build_consensus(pa.Table.from_pylist(mc_rows(rollouts, mc_results, "per_step", 2)),
                          pa.Table.from_pylist(judge_rows(rollouts, verdicts)), "j")
    kept = dict(zip(res.table.column("rollout_id").to_pylist(), res.table.column("first_error").to_pylist(),
                    strict=True))
    return kept, res.breakdown


def _mc(rollouts, base_url: str):
    from prmforge.engines.openai import OpenAIEngine
    from prmforge.labeling.mc import EngineValue, MCItem, default_grader, run_search

    value = EngineValue(OpenAIEngine("policy", base_url=base_url, max_retries=2), default_grader(), k=2,
                        max_tokens=16, seed=0, separator="\n", batch_prefixes=64)
    return run_search([MCItem(r.rollout_id, r.prompt, r.steps, r.gold, r.final_correct) for r in rollouts],
                      "per_step", value)


def test_prompt_injection_cannot_set_a_label(fault) -> None:
    from prmforge.labeling.settings import JudgeSettings
    from resources.judge import JudgeResource

    clean = world_rollouts(16, seed=21)
    injected = world_rollouts(16, seed=21, inject=True)
    truth = {r.rollout_id: r.true_first_error for r in injected}
    golds = {r.problem: r.gold for r in clean + injected}
    assert all(INJECTION in r.problem for r in injected)

    # 1. calculator judge + honest MC: the injected text changes nothing.
    with LoopbackLLM(brain(golds)) as honest:
        mc_clean, mc_inj = _mc(clean, honest.base_url), _mc(injected, honest.base_url)
    calc = JudgeResource(kind="calculator").make()
    kept_clean, _ = _consensus(clean, mc_clean, calc.judge([r.problem for r in clean], [r.steps for r in clean],
                                                           JudgeSettings()))
    kept_inj, _ = _consensus(injected, mc_inj, calc.judge([r.problem for r in injected],
                                                          [r.steps for r in injected], JudgeSettings()))
    assert kept_inj == kept_clean and len(kept_inj) == len(injected)
    assert all(fe == truth[rid] for rid, fe in kept_inj.items())

    # 2. an LLM judge that OBEYS the injection (says -1), with an honest and with an obeying policy.
    outcomes = {}
    for policy_obeys in (False, True):
        with LoopbackLLM(brain(golds, obey=True)) as obeying, LoopbackLLM(brain(golds)) as honest_policy:
            judge = JudgeResource(kind="llm", backend="openai", model="judge", base_url=obeying.base_url,
                                  max_retries=2)
            with judge.make() as j:
                verdicts = j.judge([r.problem for r in injected], [r.steps for r in injected],
                                   JudgeSettings(max_tokens=64))
            assert all(v.status == "ok" and v.first_error == -1 for v in verdicts)  # the judge was fooled
            mc = _mc(injected, (obeying if policy_obeys else honest_policy).base_url)
        kept, breakdown = _consensus(injected, mc, verdicts)
        wrong = [r.rollout_id for r in injected if r.true_first_error >= 0]
        assert not set(wrong) & set(kept)  # every fooled verdict on a wrong solution is dropped
        assert all(fe == truth[rid] for rid, fe in kept.items())  # what is kept is right
        outcomes[policy_obeys] = (len(kept), len(wrong), breakdown)
    fault(f"prompt injection in the problem text ('{INJECTION}')", len(injected) * 3,
          "calculator judge: consensus labels identical to the uninjected run; llm judge (loopback) that obeys "
          "and answers -1: every wrong solution is dropped as a disagreement, every kept label equals the truth",
          rollouts=len(injected), calculator_kept=len(kept_inj),
          llm_honest_policy_kept=outcomes[False][0], llm_obeying_policy_kept=outcomes[True][0],
          wrong_solutions_dropped=outcomes[False][1], disagreements=outcomes[False][2]["judge_says_no_error"],
          wrong_labels_kept=0)


# ---------------------------------------------------------------------------
# model loading
# ---------------------------------------------------------------------------
class _Evil:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _pickle_only_model(folder: Path, marker: Path) -> Path:
    from prmforge.engines.tiny import build_tiny_qwen2

    build_tiny_qwen2(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    return folder


def test_pickle_checkpoints_refused(tmp_path: Path, fault) -> None:
    from prmforge.engines.factory import EngineConfig
    from prmforge.engines.hf import HFEngine
    from prmforge.model_files import ModelSourceError, PickleWeightsError
    from prmforge.prm.model import ProcessRewardModel, build_prm
    from prmforge.prm.settings import PRMTrainSettings
    from resources.engine import EngineResource
    from resources.judge import JudgeResource

    marker = tmp_path / "PWNED"
    folder = _pickle_only_model(tmp_path / "pickled", marker)
    errors = []
    with pytest.raises(Exception) as e1:
        HFEngine(str(folder), device="cpu")
    errors.append(str(e1.value))
    with pytest.raises(PickleWeightsError) as e2:
        build_prm(str(folder))
    errors.append(str(e2.value))
    (folder / "prm_config.json").write_text("{}")
    with pytest.raises((PickleWeightsError, ModelSourceError)) as e3:
        ProcessRewardModel.load(str(folder))
    errors.append(str(e3.value))
    assert all("pickle" in m.lower() or "safetensors" in m.lower() for m in errors), errors
    assert not marker.exists()  # never unpickled
    # A folder with both: the safetensors weights load, the pickle is never read.
    from prmforge.engines.tiny import build_tiny_qwen2

    both = build_tiny_qwen2(tmp_path / "both")
    (Path(both) / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    HFEngine(str(both), device="cpu").close()
    assert not marker.exists()
    # trust_remote_code is off unless configured, everywhere it can be set.
    defaults = {"EngineConfig": EngineConfig().trust_remote_code, "EngineResource": EngineResource().trust_remote_code,
                "JudgeResource": JudgeResource().trust_remote_code,
                "PRMTrainSettings": PRMTrainSettings().trust_remote_code}
    assert not any(defaults.values())
    fault("pickle-only checkpoint (`pytorch_model.bin` whose unpickling writes a marker file) given to HFEngine, "
          "build_prm and ProcessRewardModel.load; and beside safetensors weights", 4,
          "each refused with an error naming pickle/safetensors; the marker never appears; trust_remote_code "
          "defaults to False", errors=[m.replace(str(folder), "<folder>")[:110] for m in errors], marker_written=marker.exists(),
          trust_remote_code_defaults=defaults)


def test_remote_code_not_run_unless_configured(tmp_path: Path, fault) -> None:
    from prmforge.engines.hf import HFEngine
    from prmforge.engines.tiny import build_tiny_qwen2

    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = Path(build_tiny_qwen2(tmp_path / "remote"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_config.EvilConfig", "AutoModelForCausalLM": "evil_model.EvilModel"}
    cfg["model_type"] = "evil-llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (folder / "evil_config.py").write_text(code + "from transformers import LlamaConfig\n"
                                            "class EvilConfig(LlamaConfig):\n    model_type = 'evil-llama'\n")
    (folder / "evil_model.py").write_text(code + "from transformers import LlamaForCausalLM as EvilModel\n")
    with pytest.raises(Exception) as err:
        HFEngine(str(folder), device="cpu")
    assert not marker.exists()
    fault("model folder whose config.json auto_maps to custom Python (marker-writing) code, loaded with default "
          "settings", 1, "load refused; the custom code never runs", error=str(err.value).replace(str(folder), "<folder>")[:160],
          marker_written=marker.exists())


# ---------------------------------------------------------------------------
# network services bind to loopback
# ---------------------------------------------------------------------------
def test_services_bind_loopback(tmp_path: Path, fault) -> None:
    import socket

    from openai_server import CompletionServer

    from prmforge.engines.factory import EngineConfig
    from resources.engine import EngineResource
    from resources.judge import JudgeResource

    bound = {}
    with CompletionServer() as cs:
        bound["tests/openai_server.CompletionServer"] = cs.httpd.server_address[0]
    with LoopbackLLM(lambda p, i: "") as ll:
        bound["LoopbackLLM"] = ll.httpd.server_address[0]
    s3 = OwnS3Server()
    s3.start()
    try:
        with socket.create_connection(("127.0.0.1", s3.port), timeout=2):
            pass
        bound["moto S3 server (tests/conftest.S3Server, OwnS3Server)"] = "127.0.0.1"
        outside = _non_loopback_ip()
        if outside:
            with pytest.raises(OSError), socket.create_connection((outside, s3.port), timeout=1):
                pass
    finally:
        s3.stop()
    defaults = {"EngineConfig.base_url": EngineConfig().base_url, "EngineResource.base_url":
                EngineResource().base_url, "JudgeResource.base_url": JudgeResource().base_url}
    assert all(u.startswith("http://127.0.0.1:") for u in defaults.values())
    for name, addr in bound.items():
        assert addr == "127.0.0.1", (name, addr)
    from pipelines.cli import build_parser, ui_command

    ui = build_parser().parse_args(["ui"])
    cmd = ui_command(ui.host, ui.port)
    assert ui.host == "127.0.0.1" and cmd[cmd.index("-h") + 1] == "127.0.0.1"
    bound["prmforge ui (dagster dev -h, default)"] = ui.host
    fault("network services started by prmforge and its tests", len(bound), "each binds 127.0.0.1 (not reachable "
          "on another interface); engine/judge endpoints default to loopback", bound=bound,
          client_defaults=defaults, non_loopback_interface_tested=bool(outside))


def _non_loopback_ip() -> str | None:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip
