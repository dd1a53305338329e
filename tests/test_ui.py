"""The Dagster UI as a user sees it: dagster-webserver on 127.0.0.1, GraphQL, headless Chromium.

* GraphQL: the asset graph holds every stage; a dataset partition is added
  and a run of a small selection (seed ingestion) is launched and succeeds.
* Chromium (Debian's ``chromium``) loads each asset-group graph page and the
  asset names must be in the rendered DOM; screenshots are kept under
  ``test-artifacts/ui/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from net_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "ui"
LOCATION = "prmforge"
REPOSITORY = "__repository__"
# Every stage asset, in pipeline order (the UI must show them all).
STAGE_ASSETS = ("seed_problems", "seed_problems_quarantine", "seed_problems_dropped", "policy_model",
                "prm_base_model", "world_benchmark", "policy_rollouts", "mc_step_labels", "judge_step_labels",
                "consensus_labels", "prm_model", "prm_evaluation", "registered_prm")


class WebServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            doc = json.loads(resp.read())
        assert "errors" not in doc, doc["errors"]
        return doc["data"]


@pytest.fixture
def webserver(tmp_path: Path, _isolated_home: Path) -> Iterator[WebServer]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Runs launch straight away (no daemon needed), so the test controls what runs.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets:\n  gsm8k-sample: {source: 'bundled:gsm8k_sample.jsonl', format: jsonl, "
                        "adapter: gsm8k}\n")
    env = dict(os.environ, DAGSTER_HOME=str(home), PRMFORGE_REGISTRY=str(registry),
               PRMFORGE_HOME=str(_isolated_home), PRMFORGE_PROFILE="tiny", PRMFORGE_MAX_RETRIES="0")
    port = free_port()
    log_path = tmp_path / "webserver.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = WebServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"webserver did not come up:\n{log_path.read_text()[-4000:]}")
            try:
                data = server.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                      "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    err = entries[0]["locationOrLoadError"]
                    assert err["__typename"] == "RepositoryLocation", f"code location failed to load: {err}"
                    break
            except OSError:
                pass
            time.sleep(1)
        yield server
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


ASSET_NODES = "{ assetNodes { assetKey { path } groupName isPartitioned } }"

ADD_PARTITION = """
mutation($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName,
                      partitionKey: $partitionKey) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

LAUNCH = """
mutation($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN_STATUS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"


def test_asset_graph_and_a_launched_run_through_graphql(webserver: WebServer) -> None:
    nodes = webserver.graphql(ASSET_NODES)["assetNodes"]
    names = {n["assetKey"]["path"][-1] for n in nodes}
    expected = set(STAGE_ASSETS)
    assert expected <= names, f"missing from the asset graph: {sorted(expected - names)}"

    repo = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    added = webserver.graphql(ADD_PARTITION, {"repositorySelector": repo, "partitionsDefName": "datasets",
                                              "partitionKey": "gsm8k-sample"})["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added

    selection = [{"path": [n]} for n in STAGE_ASSETS if n.startswith("seed_problems")]
    params = {
        "selector": {**repo, "jobName": "seed_job", "assetSelection": selection},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "gsm8k-sample"}]},
    }
    launched = webserver.graphql(LAUNCH, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.time() + 300
    status = None
    while time.time() < deadline:
        status = webserver.graphql(RUN_STATUS, {"runId": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id} ended {status}"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_asset_graph_pages_render_in_headless_chromium(webserver: WebServer, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    nodes = webserver.graphql(ASSET_NODES)["assetNodes"]
    groups: dict[str, set[str]] = {}
    for n in nodes:
        groups.setdefault(n["groupName"], set()).add(n["assetKey"]["path"][-1])
    expected = set(STAGE_ASSETS)
    assert expected <= set().union(*groups.values())

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base_flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1600,1000", "--virtual-time-budget=30000"]
    rendered: set[str] = set()
    for group, assets in sorted(groups.items()):
        url = f"{webserver.url}/locations/{LOCATION}/asset-groups/{group}"
        profile = tmp_path / f"chromium-{group}"  # a fresh profile per page load
        dom = subprocess.run([browser, *base_flags, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-2000:]
        text = _visible_text(dom.stdout)
        missing = {a for a in assets if a not in text}
        assert not missing, f"group {group}: {sorted(missing)} not rendered at {url}"
        rendered |= assets
        shot = ARTIFACTS / f"asset-group-{group}.png"
        shutil.rmtree(profile, ignore_errors=True)
        subprocess.run([browser, *base_flags, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                       capture_output=True, timeout=180, check=True)
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
    assert expected <= rendered
