"""The Dagster UI over a materialized home, as a person would open it.

Starts ``dagster-webserver`` and ``dagster-daemon`` on 127.0.0.1 over a home where the CLI has
materialized the data stage of the test world, then checks through the GraphQL API and in
headless Chromium that the global asset lineage shows every asset of the code location in its
group, that ``item_catalog`` lists every city partition, that a materialization's metadata is
displayed, and that the data group shows partition fill and asset-check results. Screenshots
go to ``test-artifacts/ui/``.
"""

import json
import urllib.request

import pytest
import yaml

from local_services import (
    REPO,
    VENV_BIN,
    HeadlessChromium,
    child_env,
    chromium_binary,
    free_port,
    lgsid_cli,
    require,
    start,
    stop,
    wait_for,
)

SOURCE = {"kind": "generator", "preset": "test", "seed": 0}
DATA_STAGE = "item_catalog,user_interactions,catalog_quarantine"
MATERIALIZED = ["portland", "springfield-illinois"]
ARTIFACTS = REPO / "test-artifacts" / "ui"


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.load(response)
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def expected_assets() -> dict[str, str]:
    """Asset key -> group of the code location the webserver loads (enumerated, not listed)."""
    from orchestration.definitions import build_defs
    from resources import DataSource

    graph = build_defs(home="/tmp/lgsid-ui-defs", source=DataSource(**SOURCE)).resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()
            if graph.get(k).is_materializable}


def all_cities() -> list[str]:
    from resources import DataSource

    return DataSource(**SOURCE).city_keys()


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, home): webserver + daemon over a home with the data stage materialized."""
    browser_bin = chromium_binary()
    require(browser_bin, "Chromium")
    home = tmp_path_factory.mktemp("ui") / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False},
                                                                "nux": {"enabled": False}}))
    import dagster as dg

    # Create the instance's SQLite storage once, before three processes open it at the same time.
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("city", all_cities())  # every city, materialized or not
    logs = tmp_path_factory.mktemp("ui-logs")
    env = child_env(DAGSTER_HOME=str(dagster_home), LGSID_HOME=str(home), LGSID_SOURCE=json.dumps(SOURCE))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    webserver = daemon = None
    try:
        # The servers load the code location while the CLI materializes (same instance).
        webserver = start([str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                           "-w", str(REPO / "workspace.yaml")], logs / "webserver.log", env=env)
        daemon = start([str(VENV_BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                       logs / "daemon.log", env=env)
        lgsid_cli("materialize", "--preset", "test", "--select", DATA_STAGE, "--cities", ",".join(MATERIALIZED),
                  "--home", str(home), "--log-level", "WARNING", env=env)

        def location_loaded():
            data = graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                 "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
            entry = data["workspaceOrError"]["locationEntries"][0]
            error = entry["locationOrLoadError"]
            assert error is None or error["__typename"] != "PythonError", error
            return entry["loadStatus"] == "LOADED" and error is not None

        wait_for(location_loaded, 120, "code location did not load", webserver, logs / "webserver.log")
        yield base, home
    finally:
        stop(daemon, timeout=10)
        stop(webserver, timeout=10)


@pytest.fixture(scope="module")
def browser(ui, tmp_path_factory):
    chrome = HeadlessChromium(chromium_binary(), tmp_path_factory.mktemp("chromium"))
    try:
        chrome.open_page()
        yield chrome
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def test_graphql_lists_every_asset_group_and_city_partition(ui):
    base, _ = ui
    nodes = graphql(base, "{ assetNodes { assetKey { path } groupName isPartitioned partitionKeys } }")["assetNodes"]
    shown = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    expected = expected_assets()
    assert set(shown) == set(expected)
    assert {k: n["groupName"] for k, n in shown.items()} == expected
    cities = all_cities()
    for key, node in shown.items():
        if node["isPartitioned"]:
            assert sorted(node["partitionKeys"]) == sorted(cities), key
    statuses = graphql(base, """{ assetNodeOrError(assetKey: {path: ["item_catalog"]}) { ... on AssetNode {
        assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } } } } }""")
    materialized = statuses["assetNodeOrError"]["assetPartitionStatuses"]["materializedPartitions"]
    assert sorted(materialized) == sorted(MATERIALIZED)


def test_daemon_is_healthy(ui):
    base, _ = ui

    def healthy():
        data = graphql(base, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"]) and statuses

    statuses = wait_for(healthy, 60, "dagster-daemon did not report healthy")
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= {s["daemonType"] for s in statuses}


def _shown(text: str, name: str) -> bool:
    """The graph abbreviates long names in the middle (``distanc…_negatives``)."""
    if name in text:
        return True
    return any("…" in line and name.startswith(line.split("…")[0]) and name.endswith(line.split("…")[1])
               for line in text.splitlines())


def test_global_asset_lineage_shows_every_asset_in_its_group(ui, browser, artifacts):
    base, _ = ui
    expected = expected_assets()
    groups = sorted(set(expected.values()))
    browser.goto(f"{base}/asset-groups", ["Global asset lineage", *groups])
    # Many assets: the UI starts with groups collapsed. Alt+E expands all of them.
    browser.press("e", "KeyE", 69, alt=True)
    text = wait_for(lambda: (t := browser.text()) and all(_shown(t, k) for k in expected) and t, 30,
                    "the expanded lineage graph did not show every asset")
    missing = [k for k in expected if not _shown(text, k)]
    assert not missing
    browser.settle()
    browser.screenshot(artifacts / "asset-lineage.png")


def test_item_catalog_partitions_view_lists_every_city(ui, browser, artifacts):
    base, _ = ui
    cities = all_cities()
    text = browser.goto(f"{base}/assets/item_catalog?view=partitions&partition={MATERIALIZED[0]}",
                        [*cities, f"Materialized ({len(MATERIALIZED)})", "n_brands"])
    assert f"Missing ({len(cities) - len(MATERIALIZED)})" in text
    browser.settle()
    browser.screenshot(artifacts / "item-catalog-partitions.png")


def test_materialization_metadata_is_shown(ui, browser, artifacts):
    base, _ = ui
    text = browser.goto(f"{base}/assets/item_catalog?view=events&partition={MATERIALIZED[0]}",
                        [f"Partition {MATERIALIZED[0]} materialized in run", "dagster/row_count", "n_brands",
                         "quarantine_rate"])
    assert "item_catalog" in text
    browser.settle()
    browser.screenshot(artifacts / "item-catalog-materialization.png")


def test_data_group_shows_partition_fill_and_checks(ui, browser, artifacts):
    base, _ = ui
    location = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["location_name"]
    data_assets = sorted(k for k, g in expected_assets().items() if g == "data")
    cities = all_cities()
    text = browser.goto(f"{base}/locations/{location}/asset-groups/data",
                        [*data_assets, f"{len(cities)} partitions", "% filled", "Passed"])
    fill = round(100 * len(MATERIALIZED) / len(cities))
    assert f"{fill}% filled" in text or f"{fill - 1}% filled" in text  # rounding of 2/3 either way
    browser.settle()
    browser.screenshot(artifacts / "data-group.png")


def test_a_materialization_shows_its_typed_table_and_its_plot(ui, browser, artifacts):
    """The quarantine's reasons are a typed table (column headers, sortable), the catalogue's
    map is an inline image."""
    base, _ = ui
    city = MATERIALIZED[0]
    text = browser.goto(f"{base}/assets/item_catalog?view=events&partition={city}", ["map", "n_cat1"])
    browser.settle()
    browser.screenshot(artifacts / "item-catalog-map.png")
    assert "[Show Markdown]" in text
    # The plot's row opens its rendered markdown: the inline PNG, drawn.
    clicked = browser.evaluate("""(() => {
        const row = Array.from(document.querySelectorAll('tr'))
            .find(tr => tr.cells.length && tr.cells[0].innerText.trim() === 'map');
        const link = row && Array.from(row.querySelectorAll('*'))
            .find(e => e.children.length === 0 && e.innerText.trim() === '[Show Markdown]');
        if (link) { link.click(); }
        return !!link; })()""")
    assert clicked
    drawn = "Array.from(document.images).filter(i => i.src.startsWith('data:image/png') && i.naturalWidth > 100).length"
    assert wait_for(lambda: browser.evaluate(drawn) >= 1, 20, "the map plot was not drawn")
    browser.settle()
    browser.screenshot(artifacts / "item-catalog-map-open.png")
    meta = graphql(base, """query($p: String!) { assetNodeOrError(assetKey: {path: ["catalog_quarantine"]}) {
        ... on AssetNode { assetMaterializations(partitions: [$p], limit: 1) { metadataEntries {
        label __typename ... on TableMetadataEntry { table { schema { columns { name type } } } } } } } } }""",
                   {"p": city})
    entries = meta["assetNodeOrError"]["assetMaterializations"][0]["metadataEntries"]
    reasons = next(e for e in entries if e["label"] == "reasons")
    assert reasons["__typename"] == "TableMetadataEntry"
    assert [c["name"] for c in reasons["table"]["schema"]["columns"]] == ["source", "reason", "len"]
    text = browser.goto(f"{base}/assets/catalog_quarantine?view=events&partition={city}",
                        ["reasons", "Show schema"])
    after = text[text.index("reasons"):]
    assert all(col in after[:200] for col in ("source", "reason", "len"))  # the table's column headers
    browser.settle()
    browser.screenshot(artifacts / "catalog-quarantine-reasons.png")
