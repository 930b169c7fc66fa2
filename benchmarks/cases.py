"""The shapes the benchmarks time, all of one type, `ConvShape`.

- `CASES` (`run.py`): four small layers whose kernels stay in cache;
- `DEEPFACE_LAYERS` (`models.py`): DeepFace's locally connected L4, L5 and
  L6, whose kernels do not (L4's is 239 MB);
- `REGIMES` (`models.py`): layers of other fields, each a regime DeepFace's
  do not cover: 3D fields with few filters (patches far larger than the
  kernel), a long 1D sequence, a strided 2D layer with many filters;
- `TRANSPOSE_CASES` (`transpose.py`): the inputs of the transposed layers;
- `GENOMICS` (`genomics.py`): models of genomic prediction and expression,
  each a `ModelCase`: long sequences, 1-4 channels, small windows, few
  filters (but for the wide one), stacked with residual adds or alone.

`TARGETS`, beside them, is what the report holds the results against.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One locally connected layer: its input, window, strides and filters.

    `input_shape` is ``(batch, *spatial, channels)`` (channels_last), with
    batch None where each measurement picks its own (`DEEPFACE_LAYERS`). The
    sizes derived below are those of the forward layer with this input; a
    transposed layer (`TRANSPOSE_CASES`) computes its own output shape. The
    output positions and patch size are the package's own (`geometry`).
    """

    name: str
    input_shape: tuple
    kernel_size: tuple
    strides: tuple
    filters: int
    padding: str = "valid"
    label: str = ""  # for the results and the tables
    short: str = ""  # for the chart's axis
    # Build + first call is reported for these (the 32x32 and 128x128 inputs).
    report_build: bool = False
    # Why tf.keras 2 is not timed beside this shape (`REGIMES`); "" if it is.
    keras2_skipped: str = ""

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
    def geometry(self):
        """The forward layer's `_shapes.Geometry`, as the engine derives it."""
        from keras_localconn import _arguments

        return _arguments.standardize_geometry(
            self.spatial,
            self.channels,
            self.kernel_size,
            self.strides,
            self.padding,
            1,
            self.name,
        )

    @property
    def output_spatial(self):
        return self.geometry.output_shape

    @property
    def positions(self):
        return self.geometry.num_positions

    @property
    def patch_size(self):
        return self.geometry.patch_size

    @property
    def output_shape(self):
        return (self.batch, *self.output_spatial, self.filters)

    @property
    def kernel_shape(self):
        return (self.positions, self.patch_size, self.filters)

    def kernel_bytes(self, itemsize=4):
        return self.positions * self.patch_size * self.filters * itemsize

    def activation_bytes(self, batch, itemsize=4):
        """Input plus output of one call at `batch`."""
        inputs = batch * math.prod(self.input_shape[1:])
        outputs = batch * self.positions * self.filters
        return (inputs + outputs) * itemsize

    def flops(self, batch):
        return 2 * self.positions * self.patch_size * self.filters * batch


CASES = (
    ConvShape(
        "deepface",
        (64, 32, 32, 16),
        (3, 3),
        (1, 1),
        32,
        label="2D (64,32,32,16) 3×3 32f",
        short="DeepFace-like\n32×32",
        report_build=True,
    ),
    ConvShape(
        "large",
        (8, 128, 128, 8),
        (3, 3),
        (1, 1),
        16,
        label="2D (8,128,128,8) 3×3 16f",
        short="large\n128×128",
        report_build=True,
    ),
    ConvShape(
        "strided",
        (64, 32, 32, 16),
        (3, 3),
        (2, 2),
        32,
        label="2D (64,32,32,16) 3×3 s2 32f",
        short="strided\n32×32, s2",
    ),
    ConvShape(
        "seq1d",
        (256, 1000, 16),
        (5,),
        (1,),
        32,
        label="1D (256,1000,16) k5 32f",
        short="1D\nlength 1000",
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}

DEEPFACE_LAYERS = (
    ConvShape("L4", (None, 63, 63, 16), (9, 9), (1, 1), 16),
    ConvShape("L5", (None, 55, 55, 16), (7, 7), (2, 2), 16),
    ConvShape("L6", (None, 25, 25, 16), (5, 5), (1, 1), 16),
)

_NO_KERAS2_3D = "tf.keras 2 has no LocallyConnected3D"

REGIMES = (
    # A 3D field as in ocean and weather emulators: a 48 MB kernel, patches
    # 27x the input and 4x the kernel (batch / filters), bound by memory.
    ConvShape(
        "field3d",
        (8, 24, 48, 48, 4),
        (3, 3, 3),
        (1, 1, 1),
        2,
        padding="same",
        label="3D (8,24,48,48,4) 3×3×3 2f same",
        keras2_skipped=_NO_KERAS2_3D,
    ),
    # A second point of that regime: one filter, two channels, a 7 MB kernel.
    ConvShape(
        "field3d_1f",
        (4, 32, 32, 32, 2),
        (3, 3, 3),
        (1, 1, 1),
        1,
        padding="same",
        label="3D (4,32,32,32,2) 3×3×3 1f same",
        keras2_skipped=_NO_KERAS2_3D,
    ),
    # A long sequence (genomics): 3 990 positions, FLOP-bound at batch 256.
    ConvShape(
        "genomics1d",
        (256, 4000, 4),
        (11,),
        (1,),
        32,
        label="1D (256,4000,4) k11 32f",
        keras2_skipped="its graph holds one slice per output position (3 990): "
        "building it, the first predict_on_batch and the first train_on_batch "
        "took 10 + 56 + 56 s here, more than this whole part's budget",
    ),
    # Strided 2D with many filters: a 142 MB kernel, patches a quarter of
    # it, FLOP-bound at batch 32.
    ConvShape(
        "strided2d",
        (32, 64, 64, 32),
        (3, 3),
        (2, 2),
        128,
        label="2D (32,64,64,32) 3×3 s2 128f",
    ),
)

REGIMES_BY_NAME = {case.name: case for case in REGIMES}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A model of locally connected layers, timed whole (`genomics.py`).

    `layers` in order, each a `ConvShape` with batch None. Where `residual`,
    each layer's input is zero-padded (``ZeroPadding1D``, half the window
    minus one on either side) so that its output adds to that input: the
    model maps `input_shape` to an output of the same shape. Otherwise the
    layers follow one another. `keras2_skipped` gives, by tf.keras 2
    implementation, why that one is not timed beside it.
    """

    name: str
    label: str
    layers: tuple
    inference_batch: int
    training_batch: int
    residual: bool = False
    keras2_skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def batches(self):
        """The batch of each step the results time, by the step's name."""
        return {"inference": self.inference_batch, "training": self.training_batch}

    @property
    def input_shape(self):
        """``(None, *spatial, channels)``: the model's input."""
        if self.residual:
            first = self.layers[0]
            return (None, *first.output_spatial, first.channels)
        return self.layers[0].input_shape

    @property
    def output_spatial(self):
        return self.layers[-1].output_spatial

    @property
    def filters(self):
        return self.layers[-1].filters


def residual_pads(shape):
    """``(before, after)``: the zeros around a residual layer's input, so
    that its valid output is as long as that input."""
    (window,) = shape.kernel_size
    return (window - 1) // 2, window // 2


def _spaced(number):
    """``"44 314"``: thousands apart, as the page writes them."""
    return f"{number:,}".replace(",", " ")


# The markers of a published genomic-prediction model (four residual
# LocallyConnected1D(1, k), k = 2..5, implementation=3 in tf.keras 2).
GENOMIC_MARKERS = 44_314
# The expression features of the NCI TC1 tumour classifier (ECP-CANDLE), whose
# first layer is LocallyConnected1D(128, 20) where it runs locally connected.
EXPRESSION_FEATURES = 60_483

GENOMICS = (
    ModelCase(
        "residual_stack",
        f"1D ({_spaced(GENOMIC_MARKERS)}, 1) residual k2…k5 1f",
        tuple(
            ConvShape(f"k{k}", (None, GENOMIC_MARKERS + k - 1, 1), (k,), (1,), 1)
            for k in range(2, 6)
        ),
        inference_batch=32,
        training_batch=2,
        residual=True,
    ),
    ModelCase(
        "onehot_strided",
        "1D (20 000, 4) one-hot, k32 s16 1f",
        (ConvShape("onehot", (None, 20_000, 4), (32,), (16,), 1),),
        inference_batch=32,
        training_batch=32,
    ),
    ModelCase(
        "wide",
        f"1D ({_spaced(EXPRESSION_FEATURES)}, 1) k20 128f",
        (ConvShape("wide", (None, EXPRESSION_FEATURES, 1), (20,), (1,), 128),),
        inference_batch=32,
        training_batch=20,  # TC1's batch size
        keras2_skipped={
            3: "its sparse kernel's indices are enumerated in Python, one pair "
            "per kernel entry (155 million here: tens of GB)"
        },
    ),
)

GENOMICS_BY_NAME = {case.name: case for case in GENOMICS}

TRANSPOSE_CASES = (
    # The decoder half of a stride-2 encoder: 16x16 -> 32x32.
    ConvShape(
        "decoder2d_s2",
        (32, 16, 16, 32),
        (3, 3),
        (2, 2),
        16,
        padding="same",
        label="2D (32, 16, 16, 32) -> 16f, k3 s2 same",
    ),
    # The adjoint of the DeepFace-like forward shape: 30x30 -> 32x32.
    ConvShape(
        "deepface2d_s1",
        (64, 30, 30, 32),
        (3, 3),
        (1, 1),
        16,
        label="2D (64, 30, 30, 32) -> 16f, k3 s1 valid",
    ),
    # A 1D upsampler: 500 -> 1000 steps.
    ConvShape(
        "upsample1d_s2",
        (128, 500, 32),
        (4,),
        (2,),
        16,
        padding="same",
        label="1D (128, 500, 32) -> 16f, k4 s2 same",
    ),
)


@dataclasses.dataclass(frozen=True)
class Target:
    """One target: the report's `measure` of a case at most `bound` (or at
    least, `at_least`), on the cases of `part` named in `cases` (all of
    them if empty) and on `backends` (all if empty)."""

    label: str  # how the page names it where it is missed
    measure: str  # a measure the report computes for the part, by name
    bound: float
    at_least: bool = False
    part: str = "cases"
    cases: tuple = ()
    backends: tuple = ()

    def applies(self, part, case_name, backend):
        return (
            part == self.part
            and (not self.cases or case_name in self.cases)
            and (not self.backends or backend in self.backends)
        )

    def missed(self, value):
        """Whether `value` misses it; an unmeasured one (None) does not."""
        if value is None:
            return False
        return value < self.bound if self.at_least else value > self.bound


TARGETS = (
    # `CASES`: ours against the matmul floor and the backend's fastest anchor.
    Target("forward ≤ 1.5× floor", "forward ÷ floor", 1.5),
    Target("fwd+bwd ≤ 1.5× floor", "fwd+bwd ÷ floor", 1.5),
    Target("≥ 2× anchor", "anchor ÷ ours, fwd+bwd", 2, at_least=True),
    Target("memory ≤ anchor", "memory ÷ anchor", 1),
    Target("build + first call < 1.5 s", "build s", 1.5, cases=("large",)),
    # `REGIMES`: the 3D few-filter fields near the machine's limit.
    Target(
        "≤ 5× limit", "ours ÷ limit", 5, part="regimes", cases=("field3d", "field3d_1f")
    ),
    # `GENOMICS`: near the limit, and never slower than tf.keras 2's best.
    Target("≤ 3× limit", "ours ÷ limit", 3, part="genomics", backends=("jax",)),
    Target(
        "≤ 5× limit",
        "ours ÷ limit",
        5,
        part="genomics",
        backends=("tensorflow", "torch"),
    ),
    Target(
        "≥ best tf.keras 2", "best tf.keras 2 ÷ ours", 1, at_least=True, part="genomics"
    ),
)
