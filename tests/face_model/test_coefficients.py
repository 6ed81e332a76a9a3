import pytest
import torch

from face_model.coefficients import Coefficients, CoeffLayout


def test_deep3d_layout_has_257_entries_in_deep3d_order():
    layout = CoeffLayout(80, 64, 80, sh_channels=3)
    assert layout.size == 257
    s = layout.slices
    assert (s["identity"], s["expression"], s["albedo"]) == (slice(0, 80), slice(80, 144), slice(144, 224))
    assert (s["angles"], s["lighting"], s["translation"]) == (slice(224, 227), slice(227, 254), slice(254, 257))


def test_monochrome_lighting_has_nine_coefficients():
    assert CoeffLayout(10, 5, 3, sh_channels=1).sizes["lighting"] == 9


def test_split_join_round_trip():
    layout = CoeffLayout(7, 5, 3)
    flat = torch.randn(4, layout.size)
    coeffs = layout.split(flat)
    assert coeffs.identity.shape == (4, 7) and coeffs.lighting.shape == (4, 27)
    assert torch.equal(layout.join(coeffs), flat)


def test_split_rejects_wrong_width_with_expected_shape_in_message():
    with pytest.raises(ValueError, match=r"\(B, 48\)"):
        CoeffLayout(7, 5, 3).split(torch.zeros(2, 44))


def test_bad_layout_values():
    with pytest.raises(ValueError, match="sh_channels"):
        CoeffLayout(1, 1, 1, sh_channels=2)
    with pytest.raises(ValueError, match="n_id"):
        CoeffLayout(-1, 1, 1)


def test_replace_index_cat():
    layout = CoeffLayout(3, 2, 1)
    c = layout.split(torch.arange(2 * layout.size, dtype=torch.float32).reshape(2, -1))
    d = c.replace(identity=torch.zeros(2, 3))
    assert torch.equal(d.identity, torch.zeros(2, 3)) and torch.equal(d.angles, c.angles)
    with pytest.raises(KeyError, match="shape"):
        c.replace(shape=torch.zeros(2, 3))
    assert c.index(1).batch_size == 1
    assert torch.equal(Coefficients.cat([c.index(0), c.index(1)]).lighting, c.lighting)


def test_zeros_is_mean_face():
    c = CoeffLayout(3, 2, 1).zeros(5)
    assert c.batch_size == 5 and all(float(getattr(c, f).abs().sum()) == 0 for f in ("identity", "angles"))
