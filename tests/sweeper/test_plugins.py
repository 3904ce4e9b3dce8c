"""Plugins: operator code registers models and datasets by name; a request can only name what is registered."""

from __future__ import annotations

import copy
import json
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sweeper
from sweeper import SpecError, _registry, parse_spec
from sweeper.plugins import PluginError, load_entry_points, load_plugins, parse_plugin_modules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins"


@pytest.fixture(autouse=True)
def fresh_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test registers into copies of the registries, and forgets the plugin modules it imported."""
    monkeypatch.setattr(_registry, "models", copy.deepcopy(_registry.models))
    monkeypatch.setattr(_registry, "datasets", copy.deepcopy(_registry.datasets))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith(("plugin_", "sweeper_example_plugin", "ep_")):
            del sys.modules[name]


def write_module(folder: Path, name: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(folder))


def write_distribution(folder: Path, name: str, entry_points: dict[str, dict[str, str]],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A minimal installed distribution (a .dist-info folder) on sys.path, as pip would leave it."""
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items()) + "\n"
        for group, entries in entry_points.items()))
    monkeypatch.syspath_prepend(str(folder))


def _spec(**overrides: Any) -> dict[str, Any]:
    return {"name": "p", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": 8}, "search": {"strategy": "grid"}, **overrides}


# -- register_model / register_dataset ------------------------------------------------------------

def test_registered_names_are_usable_in_specs_and_resolve_to_the_builders() -> None:
    def build(hparams: Any, info: Any) -> str:
        return "model"

    sweeper.register_model("my_net", build)
    sweeper.register_dataset("my-data", "json:loads")

    assert "my_net" in _registry.models.names() and "my-data" in _registry.datasets.names()
    assert _registry.models.get("my_net") is build
    assert _registry.datasets.get("my-data") is json.loads  # the reference is imported on first use
    spec = parse_spec(_spec(model="my_net", dataset="my-data"))
    assert (spec.model, spec.dataset) == ("my_net", "my-data")


@pytest.mark.parametrize("name", ["os:system", "sweeper.training.models:build_mlp", "__import__('os')", "a.b",
                                  "x/y", "", "1net", "_private", "n" * 101, 7])
def test_names_that_are_not_identifier_like_are_refused(name: Any) -> None:
    with pytest.raises(PluginError, match="a name must start with a letter and have only letters, digits, "):
        sweeper.register_model(name, "json:loads")


@pytest.mark.parametrize("register, name, kind", [(sweeper.register_model, "mlp", "model"),
                                                  (sweeper.register_model, "transfer", "model"),
                                                  (sweeper.register_dataset, "digits", "dataset")])
def test_built_in_names_cannot_be_replaced(register: Any, name: str, kind: str) -> None:
    with pytest.raises(PluginError, match=f"{name!r} is a built-in {kind}; built-ins are: "):
        register(name, "json:loads")
    assert _registry.models.get("mlp").__name__ == "build_mlp"


@pytest.mark.parametrize("builder", ["os.system", "os:system()", "__import__('os').system", 42, None])
def test_a_builder_must_be_callable_or_a_module_attribute_reference(builder: Any) -> None:
    with pytest.raises(PluginError, match="cannot register model 'net': a builder"):
        sweeper.register_model("net", builder)


def test_registering_the_same_code_again_is_fine_but_other_code_under_a_taken_name_is_not() -> None:
    sweeper.register_model("net", "json:loads")
    sweeper.register_model("net", json.loads)  # the same function, as an object this time

    with pytest.raises(PluginError, match="cannot register model 'net' as json:dumps: the name is already "
                                          "registered as json:loads; choose another name"):
        sweeper.register_model("net", "json:dumps")
    assert _registry.models.get("net") is json.loads


def test_a_models_spec_time_check_runs_on_its_search_space() -> None:
    def check(space: Any) -> list[Any]:
        return [(("hparams", "units"), "units must be even")] if space["units"].value % 2 else []

    sweeper.register_model("even_net", "json:loads", check=check)

    with pytest.raises(SpecError, match="hparams.units: units must be even"):
        parse_spec(_spec(model="even_net", hparams={"units": 3}))
    assert parse_spec(_spec(model="even_net", hparams={"units": 4})).model == "even_net"


def test_a_plugin_model_that_declares_its_hparams_refuses_others_but_takes_the_trainers() -> None:
    sweeper.register_model("declared_net", "json:loads", hparams=["units", "layers"])

    assert _registry.models.hparams_of("declared_net") >= {"units", "layers", "learning_rate", "optimizer"}
    spec = parse_spec(_spec(model="declared_net", hparams={"units": 8, "layers": 2, "learning_rate": 0.01}))
    assert set(spec.hparams) == {"units", "layers", "learning_rate"}
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(model="declared_net", hparams={"units": 8, "layerz": 2}))
    ((path, message),) = caught.value.problems
    assert path == ("hparams", "layerz")
    assert "model declared_net reads no hparam 'layerz'; did you mean layers?" in message


def test_a_plugin_model_without_a_declaration_takes_any_hparam() -> None:
    sweeper.register_model("open_net", "json:loads")

    assert _registry.models.hparams_of("open_net") is None
    assert set(parse_spec(_spec(model="open_net", hparams={"anything": 1, "units": 2})).hparams) == {"anything",
                                                                                                     "units"}


@pytest.mark.parametrize("hparams", ["units", ["units", "bad name"], [3], ["learning_rate", "learning_rate"]])
def test_a_declaration_must_be_a_list_of_distinct_hparam_names(hparams: Any) -> None:
    with pytest.raises(PluginError, match="cannot register model 'net': hparams must be "):
        sweeper.register_model("net", "json:loads", hparams=hparams)


# -- --plugins modules ----------------------------------------------------------------------------

def test_parse_plugin_modules_takes_repeats_commas_and_spaces_in_order_without_repeats() -> None:
    assert parse_plugin_modules(["a,b", "c  d", "a", " b.c "]) == ["a", "b", "c", "d", "b.c"]
    assert parse_plugin_modules("x") == ["x"]
    assert parse_plugin_modules(None) == []


@pytest.mark.parametrize("value", ["plugins/mine.py", "my-plugin", "os:system", "a..b"])
def test_plugin_values_that_are_not_module_names_are_refused(value: str) -> None:
    with pytest.raises(PluginError, match=f"plugin {value!r} is not a module name like package.module"):
        parse_plugin_modules([value])


def test_load_plugins_imports_each_module_which_registers_its_names(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "plugin_nets", """
        import sweeper
        sweeper.register_model("plugin_net", "plugin_nets:build")
        sweeper.register_dataset("plugin_data", "plugin_nets:load")
        def build(hparams, info): ...
        def load(): ...
    """, monkeypatch)

    assert load_plugins(["plugin_nets"]) == ["plugin_nets"]

    assert "plugin_net" in _registry.models and "plugin_data" in _registry.datasets


def test_load_plugins_reads_sweeper_plugins_when_given_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "plugin_env", "import sweeper\nsweeper.register_model('env_net', 'json:loads')\n",
                 monkeypatch)
    monkeypatch.setenv("SWEEPER_PLUGINS", "plugin_env")

    assert load_plugins() == ["plugin_env"]
    assert "env_net" in _registry.models


@pytest.mark.parametrize("body, message", [
    (None, "cannot import plugin module 'plugin_broken': ModuleNotFoundError: No module named 'plugin_broken'"),
    ("import no_such_dependency_xyz\n", "cannot import plugin module 'plugin_broken': ModuleNotFoundError: "
                                        "No module named 'no_such_dependency_xyz'"),
    ("raise RuntimeError('needs a GPU')\n", "cannot import plugin module 'plugin_broken': RuntimeError: needs a GPU"),
    ("def broken(:\n", "cannot import plugin module 'plugin_broken': SyntaxError"),
    ("import sweeper\nsweeper.register_model('mlp', 'json:loads')\n",
     "plugin module 'plugin_broken': cannot register model 'mlp': 'mlp' is a built-in model"),
])
def test_a_plugin_that_fails_to_import_is_an_error_naming_the_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None, message: str) -> None:
    if body is not None:
        write_module(tmp_path, "plugin_broken", body, monkeypatch)
    with pytest.raises(PluginError, match=_escaped(message)):
        load_plugins(["plugin_broken"])


# -- entry points ---------------------------------------------------------------------------------

def test_entry_points_register_references_and_import_nothing_until_first_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "ep_code", "def build(hparams, info): return 'built'\ndef load(): return 'loaded'\n",
                 monkeypatch)
    write_distribution(tmp_path, "ep-plugin", {"sweeper.models": {"ep_net": "ep_code:build"},
                                               "sweeper.datasets": {"ep_data": "ep_code:load"}}, monkeypatch)

    assert load_entry_points() == {"models": ["ep_net"], "datasets": ["ep_data"]}

    assert "ep_net" in _registry.models and "ep_data" in _registry.datasets
    assert "ep_code" not in sys.modules  # only the name is known: a server never imports the code
    assert _registry.models.get("ep_net")(None, None) == "built"
    assert _registry.datasets.get("ep_data")() == "loaded"


def test_a_registry_finds_entry_points_by_itself_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_distribution(tmp_path, "ep-lazy", {"sweeper.models": {"ep_lazy_net": "json:loads"}}, monkeypatch)
    registry = _registry.Registry("model", {"mlp": "json:dumps"}, entry_point_group="sweeper.models")

    assert "ep_lazy_net" in registry
    assert registry.get("ep_lazy_net") is json.loads


@pytest.mark.parametrize("entries, message", [
    ({"mlp": "json:loads"}, "entry point 'mlp' of package 'ep-bad' (group sweeper.models): 'mlp' is a built-in model"),
    ({"os:system": "json:loads"}, "entry point 'os:system' of package 'ep-bad' (group sweeper.models): a name must "),
    ({"ep_net": "json"}, "entry point 'ep_net' of package 'ep-bad' (group sweeper.models): a builder given as text "
                         "must be a 'package.module:attribute' reference"),
])
def test_a_bad_entry_point_is_an_error_naming_the_package_and_registers_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, str], message: str) -> None:
    write_distribution(tmp_path, "ep-bad", {"sweeper.models": {"ep_fine": "json:loads", **entries}}, monkeypatch)

    with pytest.raises(PluginError, match=_escaped(message)):
        load_entry_points()
    assert "ep_fine" not in _registry.models._entries


def test_the_examples_pyproject_entry_points_name_the_examples_code(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # What `pip install ./examples/plugins` would register, read from its pyproject.toml.
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    write_distribution(tmp_path, project["name"], project["entry-points"], monkeypatch)
    monkeypatch.syspath_prepend(str(EXAMPLE))

    names = load_entry_points()
    import sweeper_example_plugin as example

    assert names == {"models": ["spiral_mlp"], "datasets": ["spirals", "spirals_splits"]}
    assert _registry.models.get("spiral_mlp") is example.build_spiral_mlp
    assert _registry.datasets.get("spirals") is example.load_spirals
    assert _registry.datasets.get("spirals_splits") is example.load_spirals_splits
    # Installed and also named with --plugins: the module registers the very same functions, no clash.
    load_plugins(["sweeper_example_plugin"])


def test_the_example_plugin_loads_no_tensorflow_where_only_names_are_needed() -> None:
    import subprocess

    code = ("import sys\nfrom sweeper.plugins import load_plugins\nload_plugins(['sweeper_example_plugin'])\n"
            "from sweeper import _registry\nassert 'spiral_mlp' in _registry.models\n"
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(EXAMPLE), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_example_plugins_datasets_have_the_shapes_its_model_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import sweeper_example_plugin as example

    from sweeper.training.datasets import Dataset, DataSplits

    arrays = example.load_spirals()
    assert isinstance(arrays, Dataset) and arrays.x.shape == (600, 2) and set(arrays.y) == {0, 1, 2}
    splits = example.load_spirals_splits()
    assert isinstance(splits, DataSplits) and splits.info == arrays.info
    x, y = next(iter(splits.train))
    assert x.shape == (2,) and y.shape == ()
    model = example.build_spiral_mlp({"units": 8, "layers": 1}, arrays.info)
    assert model.output_shape == (None, 3)


# -- the REST API: a request only names ----------------------------------------------------------

@pytest.fixture
def api(tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    with TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                        logdir=tmp_path / "runs"))) as client:
        yield client


@pytest.mark.parametrize("field, value", [
    ("model", "os:system"),
    ("model", "sweeper.training.models:build_mlp"),
    ("model", "__import__('os')"),
    ("model", "plugin_never_imported:build"),
    ("dataset", "npz:../x.npz"),
    ("dataset", "/etc/passwd"),
    ("dataset", "os:system"),
    ("dataset", "plugin_never_imported:load"),
])
def test_a_request_naming_code_instead_of_a_registered_name_is_422_at_the_field(api: Any, field: str,
                                                                                value: str) -> None:
    response = api.post("/api/v1/sweeps", json=_spec(**{field: value}))

    assert response.status_code == 422, response.text
    assert [problem["loc"] for problem in response.json()["detail"]] == [["body", field]]
    assert "plugin_never_imported" not in sys.modules
    assert api.get("/api/v1/sweeps").json()["count"] == 0


def test_a_request_may_name_what_a_plugin_registered_once_it_is_loaded(api: Any, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(model="plugin_rest_net", dataset="plugin_rest_data")
    assert api.post("/api/v1/sweeps", json=spec).status_code == 422

    write_module(tmp_path, "plugin_rest", "import sweeper\nsweeper.register_model('plugin_rest_net', 'json:loads')\n"
                                          "sweeper.register_dataset('plugin_rest_data', 'json:loads')\n", monkeypatch)
    load_plugins(["plugin_rest"])
    response = api.post("/api/v1/sweeps", json=spec)

    assert response.status_code == 201, response.text
    assert (response.json()["spec"]["model"], response.json()["spec"]["dataset"]) == ("plugin_rest_net",
                                                                                      "plugin_rest_data")


def test_a_transfer_sweep_with_weights_outside_the_data_root_is_refused_at_the_field(api: Any) -> None:
    response = api.post("/api/v1/sweeps", json=_spec(model="transfer", hparams={"weights": "../w.weights.h5"}))

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "hparams", "weights"]


# -- the commands pass plugins on -----------------------------------------------------------------

def test_the_worker_command_imports_the_plugins_and_hands_them_to_the_supervisor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import workers.supervisor
    from cli import app

    write_module(tmp_path, "plugin_cli_a", "import sweeper\nsweeper.register_model('cli_a', 'json:loads')\n",
                 monkeypatch)
    write_module(tmp_path, "plugin_cli_b", "", monkeypatch)
    started: dict[str, Any] = {}
    monkeypatch.setattr(workers.supervisor, "run_workers", lambda **kwargs: started.update(kwargs) or 0)

    result = CliRunner().invoke(app, ["worker", "--gpus", "none", "--plugins", "plugin_cli_a,plugin_cli_b",
                                      "--plugins", "plugin_cli_a"])
    from_env = CliRunner().invoke(app, ["worker", "--gpus", "none"], env={"SWEEPER_PLUGINS": "plugin_cli_b"})

    assert result.exit_code == 0, result.output
    assert "cli_a" in _registry.models
    assert from_env.exit_code == 0, from_env.output
    assert started["plugins"] == ["plugin_cli_b"]


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["submit", "spec.yaml"], ["run", "spec.yaml"]])
def test_every_command_stops_with_an_error_naming_a_plugin_that_does_not_import(command: list[str]) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, [*command, "--plugins", "plugin_missing_xyz"])

    assert result.exit_code == 2
    assert "cannot import plugin module 'plugin_missing_xyz'" in " ".join(result.output.split())


def test_the_supervisor_passes_the_plugins_to_every_worker_child(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.supervisor import Supervisor

    monkeypatch.setenv("SWEEPER_LOCK_DIR", str(tmp_path / "ids"))
    child = tmp_path / "child.py"
    child.write_text("import json, sys, pathlib\n"
                     f"pathlib.Path({str(tmp_path)!r}, sys.argv[sys.argv.index('--worker-id') + 1])"
                     ".write_text(json.dumps(sys.argv))\n")
    supervisor = Supervisor("http://127.0.0.1:9", [], cpu_workers=2, host="box",
                            child_command=[sys.executable, str(child)], plugins=["plugin_a", "pkg.plugin_b"])
    supervisor.start()

    assert supervisor.wait() == 0
    for worker_id in supervisor.worker_ids:
        argv = json.loads((tmp_path / worker_id).read_text())
        assert argv[argv.index("--plugins") + 1] == "plugin_a,pkg.plugin_b"


def test_a_worker_whose_plugin_does_not_import_exits_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    from workers.agent import main

    code = main(["--server", "http://127.0.0.1:9", "--worker-id", "w1", "--plugins", "plugin_missing_xyz"])

    assert code == 1
    assert "cannot import plugin module 'plugin_missing_xyz'" in caplog.text


def _escaped(text: str) -> str:
    import re

    return re.escape(text)
