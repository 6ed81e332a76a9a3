import io

import numpy as np
import pytest
from PIL import Image

from preprocessing.image import ImageRejected, decode_image


def test_decode_modes_and_limits(tmp_path):
    def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    wide = Image.fromarray((np.arange(64 * 32).reshape(32, 64) * 32).astype(np.uint16))  # 16-bit grey
    decoded = decode_image(encode(wide))
    assert decoded.rgb.shape == (32, 64, 3) and decoded.rgb.dtype == np.uint8 and decoded.grayscale
    assert decoded.rgb.max() > 200  # rescaled, not clipped to white or black
    rgba = decode_image(encode(Image.new("RGBA", (10, 12), (10, 20, 30, 0))))
    assert rgba.rgb.shape == (12, 10, 3) and not rgba.grayscale
    palette = decode_image(encode(Image.new("RGB", (10, 12), (200, 100, 0)).convert("P")))
    assert palette.rgb.shape == (12, 10, 3)
    with pytest.raises(ImageRejected) as info:
        decode_image(encode(Image.new("RGB", (200, 200))), max_pixels=10_000)
    assert info.value.status == "too_large"
