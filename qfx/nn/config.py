"""The per-layer format set: which format each tensor of a quantized layer uses.

A layer config is a mapping (YAML or dict, see DESIGN.md "Config")::

    {
        "input":  "ap_fixed<8,3,AP_RND,AP_SAT>",
        "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",   # or "khot<2,ap_fixed<8,1>>", "fp8_e4m3fn"
        "bias":   "ap_fixed<16,6>",
        "accum":  "auto",                               # or a FixedType spelling
        "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
        "learn_binary_point": True,                     # or a list of tensor names
    }

:class:`LayerConfig` parses and validates such a mapping once; every layer of
:mod:`qfx.nn` takes one (``config=``) and/or the same keys as keyword
arguments, which override the config. A layer uses the keys it needs and
ignores the others, so one ``default`` section can serve every layer; an
unknown key is an error (it is most likely a typo).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Union

from ..types import FixedType, Format, KHot, MinifloatType, MXType, parse_type

__all__ = ["LayerConfig", "FORMAT_KEYS", "OPTION_KEYS", "LEARNABLE_KEYS", "as_config"]

#: Tensor names a layer config may give a format for.
FORMAT_KEYS = ("input", "weight", "bias", "accum", "output", "scale", "shift", "reciprocal", "in_a", "in_b", "exp",
               "mean", "var", "inv_std", "operand")
#: Non-format options.
OPTION_KEYS = ("learn_binary_point", "weight_per_channel", "multiply", "track_overflow", "table_size", "table_range")
#: Tensors whose binary point can be learned (fixed-point formats only).
LEARNABLE_KEYS = ("input", "weight", "bias", "output", "scale", "shift", "in_a", "in_b")
MULTIPLY_MODES = ("exact", "lmul")

_FIXED_EXAMPLE = "ap_fixed<16,6>"

ConfigLike = Union["LayerConfig", Mapping[str, Any], None]


def _parse(key: str, value: Any) -> Format | None:
    if value is None:
        return None
    if isinstance(value, (FixedType, MinifloatType, KHot, MXType)):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"config key {key!r}: a format must be a spelling (str) or a qfx format object, "
            f"not {type(value).__name__} {value!r}; e.g. {key}: '{_FIXED_EXAMPLE}'"
        )
    try:
        return parse_type(value)
    except ValueError as err:
        raise ValueError(f"config key {key!r}: {err}") from None


def _fixed_only(key: str, fmt: Format | None) -> FixedType | None:
    if fmt is None or isinstance(fmt, FixedType):
        return fmt
    raise ValueError(
        f"config key {key!r} must be a fixed-point format (ap_fixed / ap_ufixed / ap_int), "
        f"not {fmt}; only weights may be K-hot, minifloat or MX (MX activations: qfx.quantize on the "
        f"tensor, not a layer format yet). E.g. {key}: '{_FIXED_EXAMPLE}'"
    )


@dataclass(frozen=True)
class LayerConfig:
    """Validated formats and options of one quantized layer.

    Parameters
    ----------
    input, bias, output, scale, shift, reciprocal, in_a, in_b : FixedType or str, optional
        Fixed-point formats of the layer's tensors (``None``: not given).
    mean, var, inv_std : FixedType or str, optional
        LayerNorm's intermediate formats (:mod:`qfx.layernorm`): the mean, the variance
        (unsigned) and ``1/sqrt(var + eps)`` (unsigned, ``AP_TRN``, ``AP_SAT``).
    weight : FixedType, KHot, MinifloatType, MXType or str, optional
        Weight format (MX, e.g. ``"mxfp4_e2m1"``: QLinear / QConv2d, blocks along the
        format's axis of the weight tensor).
    operand : MinifloatType or str, optional
        Matmul with ``multiply: lmul``: the minifloat format (e.g. ``"fp8_e4m3fn"``) both run-time
        operands are rounded to (nearest even) before their L-Mul product.
    accum : FixedType or str, optional
        Accumulator format, or ``"auto"`` (the default): the narrowest format
        in which no rounding or overflow can occur. Always fixed point, also
        for minifloat weights (products are accumulated in fixed point).
    learn_binary_point : bool or iterable of str
        ``True``: every fixed-point tensor of :data:`LEARNABLE_KEYS` the layer
        has gets a learnable binary point (K-hot and minifloat weights are
        skipped). An iterable names the tensors explicitly; naming a tensor
        whose format is not fixed point is an error at layer construction.
    weight_per_channel : bool
        A learnable weight binary point is per output channel instead of one
        scalar.
    multiply : {"exact", "lmul"}
        ``"lmul"``: minifloat weights multiply by L-Mul (see :func:`qfx.lmul`); for matmul, both
        operands are rounded to ``operand`` and multiplied by L-Mul.
    track_overflow : bool
        Count saturated/wrapped elements of every quantized tensor (slower).
    table_size : int, optional
        Lookup-table layers (:mod:`qfx.nn.table`): at most this many entries (a power of
        two; default :data:`qfx.tables.DEFAULT_TABLE_SIZE`).
    exp : FixedType or str, optional
        Softmax (:mod:`qfx.nn.softmax`): the exp table's output format (unsigned).
    table_range : number or [lo, hi], optional
        Lookup-table layers: the input range ``[lo, hi)`` the table covers (``R``: ``[-R, R)``;
        default the input format's whole range); checked by :func:`qfx.tables.plan`.
    """

    input: FixedType | None = None
    weight: Format | None = None
    bias: FixedType | None = None
    accum: FixedType | str = "auto"
    output: FixedType | None = None
    scale: FixedType | None = None
    shift: FixedType | None = None
    reciprocal: FixedType | None = None
    in_a: FixedType | None = None
    in_b: FixedType | None = None
    exp: FixedType | None = None
    mean: FixedType | None = None
    var: FixedType | None = None
    inv_std: FixedType | None = None
    operand: Format | None = None
    learn_binary_point: bool | frozenset = False
    weight_per_channel: bool = False
    multiply: str = "exact"
    track_overflow: bool = False
    table_size: "int | None" = None
    table_range: Any = None

    def __post_init__(self) -> None:
        for key in FORMAT_KEYS:
            value = getattr(self, key)
            if key == "accum":
                if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
                    object.__setattr__(self, key, "auto")
                    continue
                fmt = _parse(key, value)
                if not isinstance(fmt, FixedType):
                    raise ValueError(
                        f"config key 'accum' must be 'auto' or a fixed-point format, not {fmt}: products "
                        f"(also of K-hot and minifloat weights) are accumulated in fixed point; "
                        f"e.g. accum: 'ap_fixed<24,8>'"
                    )
                object.__setattr__(self, key, fmt)
                continue
            fmt = _parse(key, value)
            if key not in ("weight", "operand"):  # operand: matmul's L-Mul minifloat (checked by QMatMul)
                fmt = _fixed_only(key, fmt)
            object.__setattr__(self, key, fmt)
        lbp = self.learn_binary_point
        if isinstance(lbp, bool):
            pass
        elif isinstance(lbp, str) or not isinstance(lbp, Iterable):
            raise TypeError(
                f"learn_binary_point must be a bool or a list of tensor names, not {lbp!r}; "
                f"e.g. learn_binary_point: [weight, output]"
            )
        else:
            names = frozenset(lbp)
            bad = sorted(n for n in names if n not in LEARNABLE_KEYS)
            if bad:
                raise ValueError(
                    f"learn_binary_point names unknown or non-learnable tensors {bad}; "
                    f"learnable tensors: {', '.join(LEARNABLE_KEYS)}"
                )
            object.__setattr__(self, "learn_binary_point", names)
        for key in ("weight_per_channel", "track_overflow"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{key} must be a bool, not {getattr(self, key)!r}")
        ts = self.table_size
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 2 or ts & (ts - 1)):
            raise ValueError(f"table_size must be a power of two >= 2 (e.g. 1024), not {ts!r}")
        tr = self.table_range
        if isinstance(tr, (list, tuple)):
            if len(tr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tr):
                raise ValueError(f"table_range must be R (for [-R, R)) or [lo, hi] (two numbers), not {tr!r}")
            object.__setattr__(self, "table_range", (tr[0], tr[1]))
        elif tr is not None and (isinstance(tr, bool) or not isinstance(tr, (int, float)) or not tr > 0):
            raise ValueError(f"table_range must be R > 0 (for [-R, R)) or [lo, hi], not {tr!r}")
        if self.multiply not in MULTIPLY_MODES:
            raise ValueError(f"multiply must be one of {MULTIPLY_MODES}, not {self.multiply!r}")

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> "LayerConfig":
        """Build from a mapping; unknown keys raise ``ValueError``."""
        if not isinstance(mapping, Mapping):
            raise TypeError(f"a layer config must be a mapping (dict), not {type(mapping).__name__}")
        unknown = sorted(str(k) for k in mapping if k not in FORMAT_KEYS + OPTION_KEYS)
        if unknown:
            raise ValueError(
                f"unknown layer config keys {unknown}; valid keys: {', '.join(FORMAT_KEYS + OPTION_KEYS)}"
            )
        return cls(**dict(mapping))

    def updated(self, **overrides: Any) -> "LayerConfig":
        """A copy with some keys replaced (validated like :meth:`from_dict`)."""
        unknown = sorted(k for k in overrides if k not in FORMAT_KEYS + OPTION_KEYS)
        if unknown:
            raise ValueError(
                f"unknown layer config keys {unknown}; valid keys: {', '.join(FORMAT_KEYS + OPTION_KEYS)}"
            )
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Spellings and options (``from_dict(to_dict())`` round-trips)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in FORMAT_KEYS:
                if v is not None:
                    out[f.name] = v if isinstance(v, str) else str(v)
            elif isinstance(v, frozenset):
                out[f.name] = sorted(v)
            elif isinstance(v, tuple):
                out[f.name] = list(v)
            else:
                out[f.name] = v
        return out

    # -- queries --------------------------------------------------------------
    @property
    def accum_is_auto(self) -> bool:
        return isinstance(self.accum, str)

    def learns(self, key: str) -> bool:
        """Whether ``key`` gets a learnable binary point (its format must be fixed point)."""
        lbp = self.learn_binary_point
        if lbp is True:
            return key in LEARNABLE_KEYS and isinstance(getattr(self, key), FixedType)
        if lbp is False:
            return False
        return key in lbp


def as_config(config: ConfigLike = None, **overrides: Any) -> LayerConfig:
    """A :class:`LayerConfig` from a config (object, mapping or None) and keyword overrides."""
    if config is None:
        base = LayerConfig()
    elif isinstance(config, LayerConfig):
        base = config
    else:
        base = LayerConfig.from_dict(config)
    return base.updated(**overrides) if overrides else base
