"""Configuration schemas of the QuantNet model and its training (the ``[model]`` and ``[train]`` sections).

Defaults follow the paper (Koshiyama et al. 2022) and its released code where the paper is silent:
LSTM encoder/decoder with a linear transfer layer of dimension 10 (the paper's best small model),
sequence length 252, AMSGrad at lr 0.01 (0.001 for the no-transfer baselines, as released), 2000
steps, 32 windows per step with 8 markets (the paper's Table 3 batch range is 16-96).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Variant = Literal[
    "linear-linear", "linear-lstm", "lstm-linear", "lstm-lstm", "notransfer-linear", "notransfer-lstm"
]
TRANSFER_VARIANTS: tuple[str, ...] = ("linear-linear", "linear-lstm", "lstm-linear", "lstm-lstm")
BASELINE_VARIANTS: tuple[str, ...] = ("notransfer-linear", "notransfer-lstm")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(_Frozen):
    """Architecture. ``variant`` is ``<encoder/decoder>-<transfer>`` as in the paper, or a no-transfer
    baseline (one Linear or LSTM model per market, nothing shared)."""

    variant: Variant = "lstm-linear"
    transfer_dim: int = Field(10, ge=1, le=1024, description="N: encoder output and shared layer width")
    decoder_dim: int = Field(10, ge=1, le=1024, description="decoder width; also the no-transfer LSTM width")
    encoder_layers: int = Field(2, ge=1, le=2)
    decoder_layers: int = Field(2, ge=1, le=2)
    transfer_layers: int = Field(1, ge=1, le=2)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="between stacked layers, training only")
    encoder_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="encoder's own; None: dropout")
    transfer_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="shared layer's own; None: dropout"
    )
    decoder_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="decoder's own; None: dropout")
    input_scaling: Literal["train_std", "none"] = Field(
        "train_std",
        description="divide each asset's input returns by their std over its training rows (fitted once, "
        "stored in the checkpoint); 'none' feeds raw returns as the released code does",
    )

    def part_dropout(self, part: Literal["encoder", "transfer", "decoder"]) -> float:
        own = {"encoder": self.encoder_dropout, "transfer": self.transfer_dropout}.get(
            part, self.decoder_dropout
        )
        return self.dropout if own is None else own

    @property
    def encoder_kind(self) -> str | None:
        return None if self.variant in BASELINE_VARIANTS else self.variant.split("-")[0]

    @property
    def transfer_kind(self) -> str | None:
        return None if self.variant in BASELINE_VARIANTS else self.variant.split("-")[1]

    @property
    def decoder_kind(self) -> str | None:
        if self.variant == "notransfer-linear":
            return None
        return "lstm" if self.variant == "notransfer-lstm" else self.variant.split("-")[0]


class TrainConfig(_Frozen):
    """Algorithm 1 of the paper plus the guards it lacks (validation window, early stopping, costs)."""

    steps: int = Field(2000, ge=1)
    batch_markets: int = Field(8, ge=1, description="m: markets sampled per step")
    windows_per_market: int = Field(
        4, ge=1, description="random windows per sampled market per step (8 x 4 = 32 per step)"
    )
    seq_len: int = Field(252, ge=2, description="k: window length and BPTT truncation")
    lr: float | None = Field(
        None, gt=0.0, description="AMSGrad rate; None: 0.01, or 0.001 for no-transfer models (released code)"
    )
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(
        5.0, ge=0.0, description="max gradient norm; 0 disables (clips the rare spikes of the default model)"
    )
    min_bars: int | None = Field(
        None,
        ge=2,
        description="an asset with fewer valid bars in a window is left out of that window's loss; "
        "None: max(20, seq_len/4), at most seq_len/2",
    )
    seed: int = 0
    test_bars: int = Field(
        0,
        ge=0,
        description="last bars of the union calendar held out untouched (one start date for all markets)",
    )
    val_bars: int = Field(
        252, ge=0, description="bars of the union calendar before the test block that score early stopping"
    )
    eval_every: int = Field(25, ge=1, description="steps between validation evaluations")
    val_smoothing: int = Field(
        4, ge=1, description="selection criterion: mean of the last this many validation Sharpes"
    )
    min_steps: int = Field(
        200, ge=0, description="no early stop and no weights kept before this step (0: from the first check)"
    )
    patience: int = Field(
        20, ge=0, description="evaluations without a better criterion before stopping; 0: never"
    )
    cost_bps: float = Field(0.0, ge=0.0, description="cost per unit of |Δs|, in basis points")
    objective: Literal["sharpe", "vol_scaled"] = Field(
        "sharpe",
        description="sharpe: eq. 7 on positions s; vol_scaled: on s·vol_target/σ_t (deep momentum; "
        "what the quantnet strategy trades), costs on the change of that position",
    )
    vol_target: float = Field(0.15, gt=0.0, description="σ_target of the vol_scaled objective")
    vol_span: int = Field(60, ge=2, description="EWM span (bars) of σ_t in the vol_scaled objective")
    periods_per_year: float | None = Field(
        None, gt=0.0, description="Sharpe annualisation; None: from the bar spacing (252 weekday daily)"
    )
    shared: Literal["full", "partial", "frozen"] = Field(
        "full", description="how the shared layer trains when fine-tuning with --init-from"
    )
    shared_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0, description="lr factor of the shared layer if partial"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(
        1,
        ge=0,
        description="CPU threads for torch while training (0: torch's default); small nets run best on 1",
    )

    def learning_rate(self, variant: str) -> float:
        """``lr``, or the released code's rate for ``variant`` when unset."""
        if self.lr is not None:
            return self.lr
        return 0.001 if variant in BASELINE_VARIANTS else 0.01

    def window_min_bars(self, seq_len: int) -> int:
        """``min_bars`` for windows of ``seq_len`` bars."""
        if self.min_bars is not None:
            return self.min_bars
        return max(2, min(max(20, seq_len // 4), seq_len // 2))
