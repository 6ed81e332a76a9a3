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


def test_the_data_modules_get_the_configs_settings_whole(tmp_path):
    from experiments.build import build_datamodule, build_image_set_datamodule
    from experiments.config import load_config
    from face_model import load_face_model

    cfg = load_config(overrides=["data.synthetic.n_val=3", "data.sets.n_test=2", "renderer.image_size=32"])
    face_model = load_face_model("ict", n_id=4, n_exp=4, n_tex=4)
    synthetic = build_datamodule(cfg, face_model)
    assert synthetic.settings is cfg.data.synthetic and synthetic.dataset("val").n_samples == 3
    assert synthetic.dataset("val").image_size == 32
    sets = build_image_set_datamodule(cfg, face_model)
    assert sets.dataset("test").settings is cfg.data.sets and sets.dataset("test").n_sets == 2
    prepared = build_datamodule(load_config(overrides=["data.kind=prepared", f"data.prepared.root={tmp_path}"]), None)
    assert prepared.settings.root == str(tmp_path) and prepared.image_size == 224
