"""The codebook layer: an activation in, the mean of its k best codes out, every step behind a hook point.

    layer = CodebookLayer(CodebookConfig(d=64, n_codes=256, k=1))
    y = layer(x)                    # x [..., d] (or [..., G, d] with n_groups = G) -> same shape
    layer.hook_codes                # ids [..., k] ([..., G, k]): cache or edit them like any activation

Hook points, in order: ``hook_in`` (x), ``hook_scores`` ([..., n_codes] ranking scores: a hook that sets a
code's score to +inf forces it, -inf disables it), ``hook_codes`` (the selected ids, best first),
``hook_out`` (the output). While training, :attr:`CodebookLayer.aux_loss` holds the last forward's
reconstruction loss and code usage is counted for dead-code replacement.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from interp.hooks.hook_points import HookPoint

from . import functional as Fn
from .config import CodebookConfig

CODES_FILE, CONFIG_FILE = "codebook.safetensors", "codebook.json"

__all__ = ["CodebookLayer"]


class CodebookLayer(nn.Module):
    """Codebook bottleneck (see :mod:`interp.codebook.functional` for the math).

    Attributes:
        cfg: the :class:`CodebookConfig`.
        codes: parameter [G, n_codes, d].
        steps_unused: int64 buffer [G, n_codes]: training positions since each code was last selected.
        aux_loss: the last training forward's reconstruction loss (None in eval mode).
    """

    def __init__(self, cfg: CodebookConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(0)
        self.codes = nn.Parameter(torch.randn(cfg.n_groups, cfg.n_codes, cfg.d, generator=g) / cfg.d**0.5)
        self.register_buffer("steps_unused", torch.zeros(cfg.n_groups, cfg.n_codes, dtype=torch.long))
        self.hook_in, self.hook_scores, self.hook_codes, self.hook_out = HookPoint(), HookPoint(), HookPoint(), HookPoint()
        self.aux_loss: Tensor | None = None
        self._worst: Tensor | None = None  # training rows reconstructed worst in the last forward, for re-seeding
        self._handle = None  # the permanent hook that applies this codebook, while attached (interp.codebook.insert)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"d={c.d}, n_codes={c.n_codes}, k={c.k}, n_groups={c.n_groups}, similarity={c.similarity}"

    # -- forward ---------------------------------------------------------------------------------------------
    def _grouped(self, x: Tensor) -> Tensor:
        G, d = self.cfg.n_groups, self.cfg.d
        if G == 1:
            if x.shape[-1] != d:
                raise ValueError(f"codebook expects activations of width {d}, got shape {tuple(x.shape)}")
            return x.unsqueeze(-2)
        if tuple(x.shape[-2:]) != (G, d):
            raise ValueError(f"codebook with n_groups={G} expects [..., {G}, {d}], got shape {tuple(x.shape)}")
        return x

    def _ungrouped(self, t: Tensor) -> Tensor:
        return t.squeeze(-2) if self.cfg.n_groups == 1 else t

    def _regrouped(self, t: Tensor) -> Tensor:
        return t.unsqueeze(-2) if self.cfg.n_groups == 1 else t

    def select(self, x: Tensor) -> Tensor:
        """ids of the selected codes for x (no hooks, no gradient): [..., k] or [..., G, k]."""
        with torch.no_grad():
            xg = self._grouped(x)
            ids = Fn.select_codes(Fn.code_scores(xg, self.codes, self.cfg.similarity, self.cfg.layernorm), self.cfg.k)
        return self._ungrouped(ids)

    def forward(self, x: Tensor) -> Tensor:
        c = self.cfg
        x = self.hook_in(x)
        xg = self._grouped(x)
        scores = Fn.code_scores(xg, self.codes, c.similarity, c.layernorm)  # [..., G, n]
        scores = self._regrouped(self.hook_scores(self._ungrouped(scores)))
        ids = self._regrouped(self.hook_codes(self._ungrouped(Fn.select_codes(scores, c.k))))  # [..., G, k]
        q = Fn.quantize(self.codes, ids).to(x.dtype)
        if self.training and torch.is_grad_enabled():
            self.aux_loss = Fn.reconstruction_loss(xg, q, c.commitment)
            self._count_usage(xg, q, ids)
        else:
            self.aux_loss = None
        y = Fn.straight_through(xg, q) if c.straight_through else q
        return self.hook_out(self._ungrouped(y))

    # -- dead codes ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _count_usage(self, xg: Tensor, q: Tensor, ids: Tensor) -> None:
        G, n = self.cfg.n_groups, self.cfg.n_codes
        flat = ids.reshape(-1, G, ids.shape[-1])
        used = torch.zeros(G, n, dtype=torch.bool, device=ids.device)
        for g in range(G):
            used[g, flat[:, g].reshape(-1)] = True
        self.steps_unused += flat.shape[0]
        self.steps_unused[used] = 0
        err = (xg.detach() - q.detach()).pow(2).sum(-1).reshape(-1, G)  # [rows, G]
        m = min(err.shape[0], 4 * n)
        top = err.topk(m, dim=0).indices  # [m, G]
        self._worst = torch.stack([xg.detach().reshape(-1, G, xg.shape[-1])[top[:, g], g] for g in range(G)])

    @torch.no_grad()
    def replace_dead_codes(self) -> int:
        """Re-seed the codes unused for ``cfg.dead_after`` positions with the last batch's worst-reconstructed
        activations; returns how many were replaced (call between optimizer steps)."""
        if not self.cfg.dead_after or self._worst is None:
            return 0
        total = 0
        for g in range(self.cfg.n_groups):
            dead = (self.steps_unused[g] >= self.cfg.dead_after).nonzero().flatten()
            m = min(dead.numel(), self._worst.shape[1])
            if m:
                self.codes[g, dead[:m]] = self._worst[g, :m].to(self.codes.dtype)
                self.steps_unused[g, dead[:m]] = 0
                total += m
        return total

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``codebook.safetensors`` (codes) and ``codebook.json`` (config, with the sha256 of the codes and
        of itself: :mod:`interp.io`) to ``folder``."""
        from safetensors.torch import save_file

        from interp.io import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"codes": self.codes.detach().cpu().contiguous()}, str(folder / CODES_FILE))
        write_json(folder / CONFIG_FILE, self.cfg.to_dict(), checksums=[CODES_FILE])  # written last
        return folder

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> "CodebookLayer":
        """A codebook written by :meth:`save`. ``verify``: check the codes against ``codebook.json``'s sha256 first
        (:class:`interp.io.IntegrityError` naming a changed file; a folder without checksums loads with a
        warning); ``False`` when the caller verified the folder already."""
        from interp.io import RECORD_KEY, read_json, read_safetensors, verify_checksums

        folder = Path(folder)
        if verify:
            verify_checksums(folder, [CODES_FILE], record=CONFIG_FILE, what="codebook")
        doc = read_json(folder / CONFIG_FILE, what="codebook config")
        if isinstance(doc, dict):
            doc.pop(RECORD_KEY, None)
        cfg = CodebookConfig.from_dict(doc)
        layer = cls(cfg)
        codes = read_safetensors(folder / CODES_FILE, what="codebook")["codes"]
        if tuple(codes.shape) != tuple(layer.codes.shape):
            raise ValueError(f"{folder}: codes of shape {tuple(codes.shape)} do not match the config "
                             f"({tuple(layer.codes.shape)})")
        layer.codes.data.copy_(codes)
        return layer
