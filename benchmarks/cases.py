"""The benchmark shapes: four small layers whose kernels stay in cache."""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Case:
    """One local convolution: channels_last input, valid padding."""

    name: str
    label: str
    input_shape: tuple  # (batch, *spatial, channels)
    kernel_size: tuple
    strides: tuple
    filters: int
    # Build + first call is reported for these (the 32x32 and 128x128 inputs).
    report_build: bool = False
    short: str = ""  # for the chart's axis

    @property
    def rank(self):
        return len(self.input_shape) - 2

    @property
    def batch(self):
        return self.input_shape[0]

    @property
    def channels(self):
        return self.input_shape[-1]

    @property
    def spatial(self):
        return self.input_shape[1:-1]

    @property
    def output_spatial(self):
        return tuple(
            (n - k) // s + 1
            for n, k, s in zip(self.spatial, self.kernel_size, self.strides)
        )

    @property
    def positions(self):
        return math.prod(self.output_spatial)

    @property
    def patch_size(self):
        return math.prod(self.kernel_size) * self.channels

    @property
    def output_shape(self):
        return (self.batch, *self.output_spatial, self.filters)

    @property
    def kernel_shape(self):
        return (self.positions, self.patch_size, self.filters)


CASES = (
    Case(
        "deepface",
        "2D (64,32,32,16) 3×3 32f",
        (64, 32, 32, 16),
        (3, 3),
        (1, 1),
        32,
        report_build=True,
        short="DeepFace-like\n32×32",
    ),
    Case(
        "large",
        "2D (8,128,128,8) 3×3 16f",
        (8, 128, 128, 8),
        (3, 3),
        (1, 1),
        16,
        report_build=True,
        short="large\n128×128",
    ),
    Case(
        "strided",
        "2D (64,32,32,16) 3×3 s2 32f",
        (64, 32, 32, 16),
        (3, 3),
        (2, 2),
        32,
        short="strided\n32×32, s2",
    ),
    Case(
        "seq1d",
        "1D (256,1000,16) k5 32f",
        (256, 1000, 16),
        (5,),
        (1,),
        32,
        short="1D\nlength 1000",
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}
