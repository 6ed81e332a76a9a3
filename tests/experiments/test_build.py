"""Composition-root helpers: the 'auto' precision choice."""

import torch

from experiments.build import cpu_has_native_bf16, resolve_precision

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
OLDER = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


def test_native_bf16_is_read_from_the_flags_line_only():
    assert cpu_has_native_bf16(ZEN4)
    assert not cpu_has_native_bf16(OLDER)
    assert cpu_has_native_bf16("flags\t: sse amx_bf16 amx_tile\n")


def test_explicit_precisions_pass_through_and_auto_follows_the_hardware(monkeypatch):
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("experiments.build.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    monkeypatch.setattr("experiments.build.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "gpu") == "16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
