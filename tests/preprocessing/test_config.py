import pytest

from preprocessing.config import PrepareConfig


def test_config_validation():
    with pytest.raises(ValueError, match="unknown detector"):
        PrepareConfig(detector="haar")
    with pytest.raises(ValueError):
        PrepareConfig(skin_prior=0.0)
    assert PrepareConfig().resolved_upsample == 1 and PrepareConfig(detector="dlib-mmod").resolved_upsample == 0
