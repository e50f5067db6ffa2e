"""The cell options have one definition, CellOptions: every place that names them agrees with it.

PeepholeLSTM's signature (kept explicit for help()), PeepholeLSTMCell, the step function's static arguments,
the training schema, conf/model/peephole_lstm.yaml and the docs' tables. A `model` / `extras` value is
written once: in the YAML (the schema then has no default) or in the schema, never in both.
"""
from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from omegaconf import MISSING, OmegaConf

from tests.helpers.configs import CONF, compose_config
from tests.helpers.scripts import ROOT
from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell
from peephole_lstm.nn.functional import StepFlags, lstm_step
from peephole_lstm.nn.options import CELL_OPTIONS, CHOICES, LSTM_CELL_ARGUMENTS, CellOptions
from peephole_lstm.training.module import network_arguments
from peephole_lstm.training.runinfo import resolved
from peephole_lstm.training.schema import ExtrasConfig, ModelConfig

FIELDS = {f.name: f.default for f in dataclasses.fields(CellOptions)}
# PeepholeLSTM's own arguments (nn.LSTM's, the backend, the factory kwargs): the ones that are not cell options.
LAYER_ARGUMENTS = ("num_layers", "batch_first", "dropout", "bidirectional", "backend", "device", "dtype")


def _parameters(function) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(function).parameters.items() if n != "self"}


def test_the_layer_signature_is_cell_options_and_layer_arguments():
    params = _parameters(PeepholeLSTM.__init__)
    assert set(params) == set(FIELDS) | set(LAYER_ARGUMENTS)
    for name, default in FIELDS.items():
        expected = inspect.Parameter.empty if default is dataclasses.MISSING else default
        assert params[name].default == expected and type(params[name].default) is type(expected), name
        assert params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
    # nn.LSTM's positional order for its arguments; the cell options in CellOptions' order
    assert list(params)[:8] == ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                                "bidirectional", "proj_size"]
    assert [n for n in params if n in CELL_OPTIONS] == list(CELL_OPTIONS)


def test_the_layer_passes_every_option_to_its_cells():
    # every option off its default but input_gate and forget_gate (which coupled=True needs)
    changed = dict(bias=False, proj_size=2, peephole="full", peephole_gates="f", output_peephole="previous",
                   coupled=True, output_gate=False, input_activation="identity", output_activation="identity",
                   gate_recurrence=True, forget_bias=0.5, cell_clip=3.0, layer_norm=True, zoneout=0.25)
    assert set(changed) | {"input_gate", "forget_gate"} == set(CELL_OPTIONS) | {"bias"}
    lstm = PeepholeLSTM(3, 4, num_layers=2, bidirectional=True, **changed)
    assert lstm.options[0] == CellOptions(3, 4, **changed)
    assert lstm.options[1] == CellOptions(2 * 2, 4, **changed)  # layer 1 reads both directions' projections


def test_the_docstrings_describe_every_option():
    args = PeepholeLSTM.__doc__.split("Args:")[1].split("Inputs:")[0]
    for name in _parameters(PeepholeLSTM.__init__):
        assert re.search(rf"^\s+(\w+, )*{name}\b[\w, ]*:", args, re.M), name
    for name in CELL_OPTIONS:
        assert f"``{name}``" in PeepholeLSTMCell.__doc__, name


def test_the_cell_takes_cell_options():
    params = _parameters(PeepholeLSTMCell.__init__)
    assert [n for n in params if n in FIELDS] == list(LSTM_CELL_ARGUMENTS)
    assert all(params[n].default == FIELDS[n] for n in LSTM_CELL_ARGUMENTS if FIELDS[n] is not dataclasses.MISSING)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # **options: CellOptions'
    defaults = {n: FIELDS[n] for n in CELL_OPTIONS}
    assert PeepholeLSTMCell(3, 4, **defaults).options == CellOptions(3, 4) == PeepholeLSTM(3, 4).options[0]
    with pytest.raises(TypeError, match="peepholes"):
        PeepholeLSTMCell(3, 4, peepholes="full")


def test_step_flags_are_the_step_functions_static_arguments_in_order():
    names = list(inspect.signature(lstm_step).parameters)
    assert names[-len(StepFlags._fields) - 1:] == [*StepFlags._fields, "training"]


def test_the_schema_takes_the_cell_options_from_cell_options():
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for name in ("bias", *CELL_OPTIONS):
        default = fields[name].default
        assert getattr(default, "value", default) == FIELDS[name], name
        assert (name in CHOICES) == hasattr(default, "value"), name  # choices are Enums, others plain
        if name in CHOICES:
            assert [e.value for e in type(default)] == list(CHOICES[name]), name
    cfg = resolved(compose_config("train").model)
    assert {n: cfg[n] for n in ("bias", *CELL_OPTIONS)} == {n: FIELDS[n] for n in ("bias", *CELL_OPTIONS)}
    network, arguments = network_arguments(cfg, input_size=3)
    assert network is PeepholeLSTM
    assert network(**arguments).options[0] == CellOptions(3, cfg["hidden_size"])


@pytest.mark.parametrize("yaml, schema", [("model/peephole_lstm.yaml", ModelConfig),
                                          ("extras/default.yaml", ExtrasConfig)])
def test_each_value_is_written_once(yaml, schema):
    """A key the YAML sets has no default in the schema (so they cannot disagree, as lr, the scheduler and
    torch_threads once did); the cell options are CellOptions' and the YAML does not repeat them."""
    keys = set(OmegaConf.load(CONF / yaml)) - {"defaults"}
    fields = {f.name: f for f in dataclasses.fields(schema)}
    assert keys <= fields.keys()
    assert not keys & {"bias", *CELL_OPTIONS}
    for key in keys:
        assert fields[key].default is MISSING and fields[key].default_factory is dataclasses.MISSING, key
    # and every key without a value in the YAML has one in the schema
    for name, f in fields.items():
        if name not in keys:
            assert f.default is not MISSING, name


def _reference_table() -> dict[str, str]:
    """docs/reference.md's options table: argument -> its "Allowed values (default)" cell."""
    text = (ROOT / "docs" / "reference.md").read_text()
    table = text.split("| Argument | Allowed values (default) | Meaning |")[1].split("\n\n")[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[1:]]
    return {row[0].strip("| `"): row[1] for row in rows}


def test_the_reference_table_lists_every_argument_with_its_default():
    table = _reference_table()
    params = _parameters(PeepholeLSTM.__init__)
    assert list(table) == [n for n in params if n not in ("device", "dtype")]  # those two: in the text below it
    for name, allowed in table.items():
        default = params[name].default
        shown = re.search(r"\(`([^`]+)`\)$", allowed)
        if default is inspect.Parameter.empty:
            assert shown is None, name
        else:
            assert shown and shown.group(1) == (f'"{default}"' if isinstance(default, str) else repr(default)), name


def test_the_configuration_docs_name_every_model_key():
    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = text.split("Model keys (`model.<key>`")[1].split("\n\n")[0]
    for f in dataclasses.fields(ModelConfig):
        assert f"`{f.name}`" in keys, f.name
