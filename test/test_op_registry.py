"""The operator record (ops/base.py OpDef) is the one place the stages learn an operator's
facts: these invariants keep the records coherent as operators are added."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mcutrain.ops import load_all
from mcutrain.ops.base import (
    BACKWARD,
    REGISTRY,
    GradRef,
    backward_rule,
    gradient_rule,
    is_parametric,
    registered,
    trainable,
)
from mcutrain.ops.train_math import QGrad

load_all()
OPCODES = sorted(REGISTRY)


@pytest.mark.parametrize("opcode", OPCODES)
def test_gradient_is_a_rule_or_the_identity(opcode: str) -> None:
    opdef = REGISTRY[opcode]
    assert not (opdef.backward is not None and opdef.identity_gradient), opcode
    if opdef.pass_through:
        assert opdef.identity_gradient, f"{opcode}: a pass-through's gradient is the identity"


@pytest.mark.parametrize("opcode", OPCODES)
def test_weighted_operators_are_complete(opcode: str) -> None:
    opdef = REGISTRY[opcode]
    if opdef.trainable is None:
        assert not is_parametric(opcode)
        return
    assert is_parametric(opcode) and trainable(opcode) is opdef.trainable
    assert opdef.backward is not None and opdef.fused_activation, opcode
    assert opdef.float_forward is not None, opcode


def test_weighted_operators_are_the_three() -> None:
    assert {k for k in REGISTRY if is_parametric(k)} == {
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def test_backward_view_reads_the_records() -> None:
    assert dict(BACKWARD) == {k: v.backward for k, v in REGISTRY.items() if v.backward}
    assert backward_rule("RESHAPE") is None and backward_rule("NO_SUCH_OP") is None
    assert registered("NO_SUCH_OP") is None and not is_parametric("NO_SUCH_OP")
    with pytest.raises(KeyError, match="ADD has no trainable parameters"):
        trainable("ADD")


@pytest.mark.parametrize("opcode", OPCODES)
def test_a_backward_step_calls_one_rule_its_own_or_the_identity(opcode: str) -> None:
    opdef = REGISTRY[opcode]
    own, identity = opdef.backward, opdef.identity_gradient
    assert opdef.gradient is (own if own is not None else identity)
    assert gradient_rule(opcode) is opdef.gradient


def test_identity_rule_hands_dy_on_and_copies_it_into_each_wanted_input_gradient() -> None:
    add = REGISTRY["ADD"].identity_gradient
    dy = QGrad(np.arange(6, dtype=np.int16).reshape(1, 2, 3), np.float32(0.5))
    assert add.reference(None, [None, None], dy, [True, False], None, 0.0, None) == [dy, None]
    a = GradRef("(g_arena + 0)", "g_grad_scale[1]", 6)
    b = GradRef("(g_arena + 32)", "g_grad_scale[2]", 6)
    y = GradRef("(g_arena + 64)", "g_grad_scale[0]", 6)
    assert add.emit(None, None, [None, None], y, [a, None, b], None).splitlines() == [
        "std::memcpy((g_arena + 0), (g_arena + 64), 12);", "g_grad_scale[1] = g_grad_scale[0];",
        "std::memcpy((g_arena + 32), (g_arena + 64), 12);", "g_grad_scale[2] = g_grad_scale[0];"]
    # It keeps no forward input; ADD counts only its dynamic operands.
    both = SimpleNamespace(a_const=None, b_const=None)
    one = SimpleNamespace(a_const=None, b_const=np.zeros(3, np.int8))
    assert add.saves_input(both, None) == [False, False] and add.saves_input(one, None) == [False]
    assert REGISTRY["RESHAPE"].identity_gradient.saves_input(None, None) == [False]
    assert add.input_grad_depth(None) == 0
