"""Experiment files: the shipped ones load and plan; every bad one is one ConfigError naming file and field."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbench.errors import ConfigError
from qbench.hardware import detect
from qbench.runner.plan import make_plan
from qbench.schema import Experiment, json_schema, load_experiment, parse_experiment
from qbench.schema.loader import MAX_FILE_BYTES

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO_ROOT / "experiments").glob("*.yaml"))
BAD_DIR = REPO_ROOT / "tests" / "fixtures" / "bad_experiments"
DEFAULT = REPO_ROOT / "experiments" / "int8_vs_fp16.yaml"

# fixture file -> (text the location must show: "<file>: <field path>" or "<file>:<line>",
#                  text the message must contain)
BAD_CASES = {
    "malformed_yaml.yaml": (":6: invalid YAML", "expected ','"),
    "empty.yaml": (": file is empty", "empty"),
    "top_level_list.yaml": (": expected a mapping", "got list"),
    "unknown_key_typo.yaml": (": schemes[0].weights.granulrity:", "did you mean 'granularity'"),
    "unknown_top_level_key.yaml": (": modles:", "did you mean 'models'"),
    "bits_wrong_type.yaml": (": schemes[0].weights.bits:", "valid integer"),
    "bits_too_low.yaml": (": schemes[0].weights.bits:", "greater than or equal to 2"),
    "bits_too_high.yaml": (": schemes[0].weights.bits:", "less than or equal to 8"),
    "group_size_missing.yaml": (": schemes[0].weights.group_size:", "required when granularity is per_group"),
    "group_size_per_channel.yaml": (": schemes[0].weights.group_size:", "only applies to per_group"),
    "empty_models.yaml": (": models:", "at least 1 item"),
    "empty_schemes.yaml": (": schemes:", "at least 1 item"),
    "empty_workloads.yaml": (": workloads:", "at least 1 item"),
    "duplicate_scheme_names.yaml": (": schemes[2].name:", "duplicate scheme names: w8"),
    "duplicate_workload_names.yaml": (": workloads[1].name:", "duplicate workload names: text"),
    "per_token_static.yaml": (": schemes[0].activations.dynamic:", "per_token"),
    "static_without_calibration.yaml": (": schemes[0].calibration:", "need a calibration section"),
    "calibration_dataset_unknown.yaml": (": schemes[0].calibration.dataset:",
                                         "'wikipedia' is neither a workload"),
    "device_tpu.yaml": (": device:", "'tpu' is not a device"),
    "method_unknown.yaml": (": schemes[0].method.name:", "did you mean 'gptq'"),
    "method_alpha_too_high.yaml": (": schemes[0].method.alpha:", "less than or equal to 1"),
    "method_damp_zero.yaml": (": schemes[0].method.damp:", "greater than 0"),
    "method_block_size_zero.yaml": (": schemes[0].method.block_size:", "greater than or equal to 1"),
    "method_grid_zero.yaml": (": schemes[0].method.grid:", "greater than or equal to 1"),
    "method_without_calibration.yaml": (": schemes[0].calibration:", "method gptq needs a calibration section"),
    "method_param_of_other_method.yaml": (": schemes[0].method.alpha:", "a parameter of smoothquant, not of gptq"),
    "method_on_embedding.yaml": (": schemes[0].ops:", "awq applies to linear ops"),
    "method_unknown_param.yaml": (": schemes[0].method.act_ordr:", "did you mean 'act_order'"),
    "qat_steps_zero.yaml": (": schemes[0].method.steps:", "greater than or equal to 1"),
    "qat_lr_zero.yaml": (": schemes[0].method.lr:", "greater than 0"),
    "qat_batch_size_typo.yaml": (": schemes[0].method.batch_sise:", "did you mean 'batch_size'"),
    "qat_value_table.yaml": (": schemes[0].method.name:", "qat trains integer grids"),
    "qat_without_calibration.yaml": (": schemes[0].calibration:", "method qat needs a calibration section"),
    "if_fails_unknown.yaml": (": schemes[1].if_fails:", "unknown scheme 'w5'; this experiment has: w4, w4-qat"),
    "if_fails_without_gates.yaml": (": schemes[1].if_fails:", "needs gates"),
    "if_fails_chain.yaml": (": schemes[2].if_fails:", "a scheme that always runs"),
    "override_unknown_field.yaml": (": schemes[0].overrides[0].wieghts:", "did you mean 'weights'"),
    "override_skip_with_weights.yaml": (": schemes[0].overrides[0].weights:", "skip: true leaves the modules in float"),
    "override_qat.yaml": (": schemes[0].overrides[0].method.name:", "qat trains a whole scheme"),
    "override_static_without_calibration.yaml": (": schemes[0].overrides[0]:", "static activations"),
    "override_empty.yaml": (": schemes[0].overrides[0].match:", "an override changes weights"),
    "format_unknown.yaml": (": schemes[0].weights.format:", "nf4"),
    "format_with_bits.yaml": (": schemes[0].weights.bits:", "does not apply to format nf4"),
    "schema_version_2.yaml": (": schema_version:", "got 2"),
    "python_tag.yaml": (":5: invalid YAML", "tag not allowed"),
    "runtime_unknown_type.yaml": (": schemes[0].runtime.type:", "unknown llama.cpp type 'Q4_O'"),
    "runtime_unknown_name.yaml": (": schemes[0].runtime.name:", "'llama.cpp'"),
    "runtime_with_weights.yaml": (": schemes[0].weights:", "leave weights out"),
    "runtime_with_ops.yaml": (": schemes[0].ops:", "does not apply to a llama.cpp scheme"),
    "scheme_without_weights.yaml": (": schemes[0].weights:", "weights is required (or a runtime section)"),
    "ops_attention_weight_only.yaml": (": schemes[0].ops:", "op 'attention' quantizes activations"),
    "ops_unknown.yaml": (": schemes[0].ops[1]:", "got 'attn'"),
}


def _base() -> dict:
    return yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))


def _config_error(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------
# the shipped experiments


def test_there_are_shipped_experiments():
    assert DEFAULT in EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiment_validates_and_plans(path):
    exp = load_experiment(path)
    assert isinstance(exp, Experiment)
    plan = make_plan(exp, detect(include_torch=False))
    assert len(plan.cells) > 0
    assert len(plan.cells) + len(plan.skipped) == len(exp.models) * len(exp.schemes) * len(exp.workloads)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiment_round_trips(path):
    """The resolved experiment (as stored in meta.json) validates again to the same object."""
    exp = load_experiment(path)
    again = parse_experiment(yaml.safe_dump(exp.model_dump(mode="json")), source="dumped")
    assert again == exp


def test_default_experiment_contents():
    exp = load_experiment(DEFAULT)
    assert [s.name for s in exp.schemes] == ["w8a8-per-channel", "w8-per-channel", "w4-per-group"]
    assert [m.id for m in exp.models] == ["minilm", "smollm2-135m"]
    assert [w.name for w in exp.workloads] == ["text", "code"]
    assert exp.baseline.dtype == "fp16"
    assert all(exp.calibration_dataset(s) is None for s in exp.schemes)   # dynamic activations: no calibration


def test_models_are_frozen():
    exp = load_experiment(DEFAULT)
    with pytest.raises(Exception):
        exp.name = "other"  # type: ignore[misc]
    with pytest.raises(Exception):
        exp.schemes[0].weights.bits = 4  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# bad files: one ConfigError that names the file and the field (or the line)


def test_every_bad_fixture_has_an_expectation():
    on_disk = {p.name for p in BAD_DIR.glob("*.yaml")}
    assert on_disk == set(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_fixture_gives_config_error(name):
    path = BAD_DIR / name
    where, fragment = BAD_CASES[name]
    err = _config_error(load_experiment, path)
    msg = str(err)
    assert msg.startswith(str(path)), msg
    assert str(path) + where in msg, msg
    assert fragment in msg, msg
    assert "\n" not in msg
    assert err.exit_code == 2
    assert err.where is not None and err.where.startswith(str(path))


def test_yaml_python_tag_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (f'!!python/object/apply:os.system ["touch {marker}"]',
                    f'!!python/object/apply:subprocess.check_call [["touch", "{marker}"]]',
                    f'!!python/object/new:os.system ["touch {marker}"]',
                    '!!python/name:os.system'):
        exp = tmp_path / "evil.yaml"
        exp.write_text(f"schema_version: 1\nname: evil\ndescription: {payload}\n", encoding="utf-8")
        err = _config_error(load_experiment, exp)
        assert f"{exp}:3" in str(err) and "tag not allowed" in str(err), str(err)
        top = tmp_path / "evil_top.yaml"
        top.write_text(payload + "\n", encoding="utf-8")
        _config_error(load_experiment, top)
    assert not marker.exists()


def test_file_over_one_megabyte_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    text = DEFAULT.read_text(encoding="utf-8")
    big.write_text(text + "#" * (MAX_FILE_BYTES + 1 - len(text.encode())) + "\n", encoding="utf-8")
    assert big.stat().st_size > 1_000_000
    err = _config_error(load_experiment, big)
    assert str(big) in str(err) and "limited to" in str(err)


def test_file_just_under_the_limit_is_read(tmp_path):
    ok = tmp_path / "padded.yaml"
    text = DEFAULT.read_text(encoding="utf-8")
    ok.write_text(text + "#" * (MAX_FILE_BYTES - 1 - len(text.encode())) + "\n", encoding="utf-8")
    assert ok.stat().st_size == MAX_FILE_BYTES
    assert load_experiment(ok).name == "int8_vs_fp16"


def test_missing_file_and_directory(tmp_path):
    assert "no such experiment file" in str(_config_error(load_experiment, tmp_path / "nope.yaml"))
    assert str(tmp_path) in str(_config_error(load_experiment, tmp_path))


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("schema_version: 1\nname: caf\xe9\n".encode("latin-1"))
    err = _config_error(load_experiment, p)
    assert str(p) in str(err) and "UTF-8" in str(err)


def test_comment_only_file_is_empty(tmp_path):
    p = tmp_path / "comments.yaml"
    p.write_text("# nothing here\n\n", encoding="utf-8")
    assert "file is empty" in str(_config_error(load_experiment, p))


@pytest.mark.parametrize("text, where", [
    ("42\n", "got int"),
    ("just a string\n", "got str"),
    ("[1, 2]\n", "got list"),
])
def test_top_level_scalars_and_lists(text, where):
    err = _config_error(parse_experiment, text, source="x.yaml")
    assert str(err).startswith("x.yaml: expected a mapping") and where in str(err)


def _mutated(mutate) -> str:
    data = _base()
    mutate(data)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize("mutate, where, fragment", [
    (lambda d: d["measure"].update(batch_sizes=[8, 8]), "measure.batch_sizes", "unique"),
    (lambda d: d["measure"].update(batch_sizes=[]), "measure.batch_sizes", "at least 1"),
    (lambda d: d["measure"].update(batch_sizes=[0]), "measure.batch_sizes", "between 1 and 4096"),
    (lambda d: d["measure"].update(repeats=2), "measure.repeats", "greater than or equal to 3"),
    (lambda d: d["baseline"].update(dtype="int8"), "baseline.dtype", "got 'int8'"),
    (lambda d: d["schemes"][0].update(ops=["conv"]), "schemes[0].ops[0]", "got 'conv'"),
    (lambda d: d["schemes"][0].update(ops=[]), "schemes[0].ops", "at least 1"),
    (lambda d: d["schemes"][0].update(name="has space"), "schemes[0].name", "pattern"),
    (lambda d: d["schemes"][1].update(calibration={"dataset": "text", "size": 8, "methd": "mse"}),
     "schemes[1].calibration.methd",
     "did you mean 'method'"),
    (lambda d: d["schemes"][0]["activations"].update(granularity="per_row"),
     "schemes[0].activations.granularity", "got 'per_row'"),
    (lambda d: d["models"].append({"id": "minilm"}), "models[2].id", "duplicate model names: minilm"),
    (lambda d: d["models"].extend([{"id": "minilm", "name": "m"}, {"id": "hf:x", "name": "m"}]),
     "models[3].name", "duplicate model names: m"),
    (lambda d: d["models"][0].update(id=""), "models[0].id", "at least 1 character"),
    (lambda d: d.update(device="cuda:x"), "device", "not a device"),
    (lambda d: d.update(device="gpu"), "device", "not a device"),
    (lambda d: d.pop("schema_version"), "schema_version", "Field required"),
    (lambda d: d.update(schema_version="1"), "schema_version", "Input should be 1"),
    (lambda d: d.update(extra_thing=1), "extra_thing", "unknown field"),
])
def test_more_field_errors(mutate, where, fragment):
    err = _config_error(parse_experiment, _mutated(mutate), source="exp.yaml")
    assert str(err).startswith(f"exp.yaml: {where}: "), str(err)
    assert fragment in str(err), str(err)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_valid_devices(device):
    assert parse_experiment(_mutated(lambda d: d.update(device=device))).device == device


@pytest.mark.parametrize("dataset", ["builtin:code", "data/calib.txt", "x.jsonl", "code"])
def test_calibration_dataset_may_be_workload_or_spec(dataset):
    exp = parse_experiment(_mutated(lambda d: d["schemes"][1].update(calibration={"dataset": dataset, "size": 8})))
    expected = "builtin:code" if dataset == "code" else dataset
    assert exp.calibration_dataset(exp.schemes[1]) == expected


def test_error_reports_how_many_more_problems():
    def two(d):
        d["schemes"][0]["weights"]["bits"] = 9
        d["device"] = "tpu"
    err = _config_error(parse_experiment, _mutated(two), source="e.yaml")
    assert "more problem" in str(err)


def test_alias_bomb_fails_fast():
    """A few lines of YAML aliases expand to 10**9 items: the error must not try to print them."""
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = _mutated(lambda d: d.pop("schema_version")) + "schema_version: [" + ", ".join(anchors) + "]\n"
    code = textwrap.dedent(f"""
        import sys
        from qbench.errors import ConfigError
        from qbench.schema import parse_experiment
        try:
            parse_experiment(sys.stdin.read(), source="bomb.yaml")
        except ConfigError as e:
            assert len(str(e)) < 300, str(e)
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("bomb.yaml: schema_version: Input should be 1"), out.stdout


def test_cyclic_alias_is_a_config_error():
    text = _mutated(lambda d: d.pop("schema_version")) + "schema_version: &a [*a]\n"
    err = _config_error(parse_experiment, text, source="cyc.yaml")
    assert str(err).startswith("cyc.yaml: schema_version:")


def test_deep_nesting_is_a_config_error():
    for text in ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "[" * 50_000 + "]" * 50_000):
        _config_error(parse_experiment, text, source="deep.yaml")


# ---------------------------------------------------------------------------------------------
# fuzz: anything at all fed to parse_experiment is either an Experiment or a ConfigError

_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
_keys = st.sampled_from(["schema_version", "name", "models", "schemes", "workloads", "weights", "bits",
                         "granularity", "group_size", "activations", "calibration", "dataset", "id",
                         "device", "measure", "batch_sizes", "baseline", "dtype"]) | st.text(max_size=12)
_trees = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=5),
                      max_leaves=25)
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _must_be_config_error_or_ok(text: str) -> None:
    try:
        exp = parse_experiment(text, source="fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml"), str(e)
        assert e.exit_code == 2
    else:
        assert isinstance(exp, Experiment)


@_FUZZ
@given(st.dictionaries(_keys, _trees, max_size=8))
def test_fuzz_random_mappings(data):
    _must_be_config_error_or_ok(yaml.safe_dump(data, allow_unicode=True))


@_FUZZ
@given(_trees)
def test_fuzz_random_documents(data):
    _must_be_config_error_or_ok(yaml.safe_dump(data, allow_unicode=True))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


_BASE = _base()
_BASE_PATHS = [p for p in _paths(_BASE) if p]


@_FUZZ
@given(st.sampled_from(_BASE_PATHS), _trees, st.booleans())
def test_fuzz_one_field_of_a_valid_experiment(path, value, delete):
    """Replace (or delete) one field deep inside the default experiment: validators see odd values."""
    data = copy.deepcopy(_BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    if delete:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    _must_be_config_error_or_ok(yaml.safe_dump(data, allow_unicode=True))


@_FUZZ
@given(st.text(max_size=300) | st.text(alphabet=":-[]{}&*!|>?,'\"#%@`~\n abx1\t", max_size=200))
def test_fuzz_random_text(text):
    _must_be_config_error_or_ok(text)


# ---------------------------------------------------------------------------------------------
# JSON Schema


def test_json_schema_is_json_and_describes_every_field():
    schema = json.loads(json_schema())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"schema_version", "name", "models", "schemes", "workloads"}
    models = {"Experiment": schema, **schema.get("$defs", {})}
    expected = {"Experiment", "Scheme", "WeightQuant", "ActivationQuant", "Calibration", "ModelRef",
                "Baseline", "Workload", "Measure"}
    assert expected <= set(models)
    missing = []
    for model_name, model in models.items():
        assert model.get("description"), f"{model_name} has no description"
        assert model.get("additionalProperties") is False, f"{model_name} accepts unknown keys"
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{model_name}.{field}")
    assert not missing, f"fields without a description: {missing}"
    assert sum(len(m.get("properties", {})) for m in models.values()) > 30


def test_json_schema_matches_the_models():
    schema = json.loads(json_schema())
    for name, model in [("Experiment", Experiment)] + [
            (n, getattr(__import__("qbench.schema", fromlist=[n]), n)) for n in schema["$defs"]]:
        spec = schema if name == "Experiment" else schema["$defs"][name]
        assert set(spec["properties"]) == set(model.model_fields), name


def test_single_bad_item_is_one_problem_not_two():
    doc = _base()
    doc["schemes"] = [{"name": "a", "weights": {"bits": 9}}]
    err = _config_error(parse_experiment, yaml.safe_dump(doc), "f.yaml")
    assert "schemes[0].weights.bits" in str(err)
    assert "more problem" not in str(err)  # pydantic's follow-on "too short" for the list is dropped
