"""The operator record (ops/base.py OpDef) is the one place the stages learn an operator's
facts: these invariants keep the records coherent as operators are added."""

from __future__ import annotations

import pytest

from mcutrain.ops import load_all
from mcutrain.ops.base import (
    BACKWARD,
    REGISTRY,
    backward_rule,
    is_parametric,
    registered,
    trainable,
)

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
