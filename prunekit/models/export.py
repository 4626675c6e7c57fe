"""Stock export: lay a pruned model out so that stock loaders (transformers, vLLM) serve it exactly.

:func:`stock_layout` inspects a pruned Hugging Face model (after ``surgery.apply_``; only shapes, ``bias is
None``, module types and the config are read, so parameters may live on the meta device) and returns a
:class:`StockLayout`: the ``config.json`` to write, how to rewrite the state dict, and the output ``format``.

``format == "stock"``
    The stock config class of the model's own architecture describes every tensor after these *exact*
    transforms (the outputs of the written model equal the pruned model's, up to float rounding of sums with
    zero terms):

    a. **zero biases** -- a bias that pruning added (FLAP's compensation on ``down_proj``/``o_proj``) is kept by
       switching on the config flag the modeling code reads (LLaMA ``mlp_bias`` / ``attention_bias``, Qwen3 and
       Gemma ``attention_bias``, OPT ``enable_bias``); every other module under that flag gets a zero bias;
    b. **zero padding** of heterogeneous per-layer widths to the widest layer: zero rows in ``gate``/``up``
       (``fc1``, ``c_fc``) and zero columns in ``down`` (``fc2``, ``c_proj``) add ``act(0 + b) * 0 = 0``; a padded
       attention head has zero q/k/v rows (uniform softmax over zero scores, zero values) and zero ``o_proj``
       columns, so it adds 0.  Padded query heads come after the kept ones and belong to the padded KV heads,
       so the GQA head-to-KV mapping is unchanged.  OPT and GPT-2 derive ``head_dim = hidden / heads``: their
       heads are padded back to ``hidden / head_dim``.  ``LlamaConfig``, ``Gemma2Config`` and ``Gemma3TextConfig``
       (5.24) refuse ``hidden_size % num_attention_heads != 0`` even with an explicit ``head_dim``: heads are
       padded up to the next count the config class accepts;
    c. **scatter** of a :class:`~prunekit.models.surgery.CompactLinear` (V/O channels, FASP) into its full-width
       zero-filled weight (``v_proj`` rows, ``o_proj`` columns); its ``in_index``/``out_index`` buffers are
       dropped.

    Padding (b) and scatter (c) *cost parameters*: the written model is larger than the pruned one (a scattered
    V/O layer returns to its full size, a padded layer to the widest layer's size).  ``format`` stays
    ``"stock"``; :attr:`StockLayout.added_parameters` counts the cost and :attr:`StockLayout.notes` says which
    transform caused it.  Zero biases (a) cost a few parameters too and are counted the same way.

``format == "rebuild"``
    No exact stock form exists (e.g. a bias on a module whose stock class is built with ``bias=False`` and no
    config flag: Mistral's MLP and attention, Qwen2's ``o_proj`` and MLP, Qwen3/Gemma MLP).  A stock loader
    would drop such a tensor *silently*, so the output must use prunekit's private rebuild format
    (``prunekit.load_pruned``); ``notes`` say why.  ``transform`` then keeps every tensor (index buffers too)
    and only drops tied duplicates.

What was checked (transformers 5.24, the installed version): the bias flags read by ``modeling_{llama,
mistral,qwen2,qwen3,gemma,gemma2,gemma3,opt,gpt2}.py`` as listed in ``_BIAS_RULES``.  Transformers' heterogeneous
``per_layer_config`` is not read by these model classes (building a LLaMA with a per-layer
``intermediate_size`` raises ``AmbiguousGlobalPerLayerAttributeError``), hence padding.

vLLM (not installed; source read): ``vllm/model_executor/models/llama.py`` builds ``qkv_proj`` and ``o_proj``
with ``attention_bias`` and the MLP with ``mlp_bias``; ``gemma3.py`` builds ``qkv_proj``/``o_proj`` with
``attention_bias`` and the MLP without bias; ``qwen3.py`` passes ``attention_bias`` to ``qkv_proj`` only and
builds ``o_proj`` with ``bias=False`` -- its loader skips unknown ``.bias`` tensors ("Skip loading extra bias
for GPTQ models"), so vLLM would silently drop a Qwen3 ``o_proj`` bias (:attr:`StockLayout.vllm_exact` is
``False`` there).  A Nemotron-NAS (``DeciLMForCausalLM``, ``block_configs``) target for per-layer FFN widths is
*not* offered: ``nemotron_nas.py`` reads ``block_config.ffn.ffn_mult`` (width rounded up to a multiple of 256)
or, since vllm-project/vllm#30795 (Dec 2025), ``block_config.ffn.intermediate_size``, but its config class
exists only as remote code in NVIDIA's model repositories (attribute access ``block.attention.no_op`` fails on
plain dicts), stock transformers cannot load it at all, and ``num_attention_heads`` is global (only KV heads
vary), so GQA-group pruning has no exact form.  vLLM's ``AnyModel`` (``model_type="anymodel"``,
``base_architecture``, per-layer ``intermediate_size``/``num_key_value_heads``) would fit MLP widths exactly,
but is an open pull request (vllm-project/vllm#36512), not a release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ..errors import ModelError
from .adapters import adapter_for
from .linear_layers import is_conv1d

STOCK = "stock"
REBUILD = "rebuild"

_Q, _K, _V, _O = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
_GATE, _UP, _DOWN = "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
_LLAMA_ROLES = (_Q, _K, _V, _O, _GATE, _UP, _DOWN)
_OPT_ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")
_GPT2_ROLES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

_Rule = Union[bool, str]  # True/False: the stock module always / never has a bias; str: the config flag


def _rules(roles, attention: _Rule, mlp: _Rule, qkv: Optional[_Rule] = None) -> dict[str, _Rule]:
    qkv = attention if qkv is None else qkv
    return {r: (qkv if r in (_Q, _K, _V) else attention if r == _O else mlp) for r in roles}


_BIAS_RULES: dict[str, dict[str, _Rule]] = {
    # transformers 5.24 modeling_<type>.py: what decides whether each block linear has a bias
    "llama": _rules(_LLAMA_ROLES, "attention_bias", "mlp_bias"),
    "mistral": _rules(_LLAMA_ROLES, False, False),
    "qwen2": _rules(_LLAMA_ROLES, False, False, qkv=True),
    "qwen3": _rules(_LLAMA_ROLES, "attention_bias", False),
    "gemma": _rules(_LLAMA_ROLES, "attention_bias", False),
    "gemma2": _rules(_LLAMA_ROLES, "attention_bias", False),
    "gemma3_text": _rules(_LLAMA_ROLES, "attention_bias", False),
    "opt": {r: "enable_bias" for r in _OPT_ROLES},
    "gpt2": {r: True for r in _GPT2_ROLES},
}

_VLLM_READ = {"llama": True, "gemma3_text": True}
"""Model types whose vLLM model file was read and maps every flag this module sets (see the module docstring)."""


# ------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class _Axis:
    """One dimension of a module: ``stored`` entries now, ``full`` positions they index (a CompactLinear's
    full width, else ``stored``), ``target`` positions in the stock model.  ``groups > 1`` splits full and
    target into equal parts padded separately (GPT-2's fused q|k|v)."""

    stored: int
    full: int
    target: int
    compact: bool = False  # entries located by the module's index buffer
    groups: int = 1

    @property
    def identity(self) -> bool:
        return not self.compact and self.stored == self.full == self.target

    def positions(self, index: Optional[torch.Tensor], device) -> torch.Tensor:
        idx = index.to(device=device, dtype=torch.long) if self.compact else torch.arange(self.stored, device=device)
        if self.groups > 1 and self.full != self.target:
            part, tpart = self.full // self.groups, self.target // self.groups
            idx = (idx // part) * tpart + idx % part
        return idx


@dataclass(frozen=True)
class _ModuleSpec:
    """How one linear module of the pruned model is written in the stock layout."""

    name: str
    out: _Axis
    inp: _Axis
    bias: str  # "keep" | "add" (a zero bias) | "none"
    compact: bool  # a CompactLinear: drop its index buffers
    stored_transposed: bool  # the state dict holds (in, out) (HF Conv1D)
    target_transposed: bool  # the stock model holds (in, out)

    @property
    def changes(self) -> bool:
        return (not (self.out.identity and self.inp.identity) or self.bias == "add" or self.compact
                or self.stored_transposed != self.target_transposed)

    def added_parameters(self) -> int:
        stored = self.out.stored * self.inp.stored + (self.out.stored if self.bias == "keep" else 0)
        target = self.out.target * self.inp.target + (self.out.target if self.bias != "none" else 0)
        return target - stored

    def _index(self, tensors: Mapping[str, torch.Tensor], which: str) -> Optional[torch.Tensor]:
        axis = self.out if which == "out_index" else self.inp
        if not axis.compact:
            return None
        key = f"{self.name}.{which}"
        if key not in tensors:
            raise ModelError(f"StockLayout.transform: {self.name} is a CompactLinear and {key} is not in the "
                             "given tensors, so its kept rows/columns cannot be placed. Fix: pass each module's "
                             "tensors together (e.g. one decoder block's state dict at a time).")
        return tensors[key]

    def weight(self, w: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = w.t() if self.stored_transposed else w
        if not (self.out.identity and self.inp.identity):
            rows = self.out.positions(self._index(tensors, "out_index"), w.device)
            cols = self.inp.positions(self._index(tensors, "in_index"), w.device)
            wide = w.new_zeros(w.shape[0], self.inp.target)
            wide[:, cols] = w
            full = w.new_zeros(self.out.target, self.inp.target)
            full[rows] = wide
            w = full
        return (w.t() if self.target_transposed else w).contiguous()

    def bias_of(self, b: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.out.identity:
            return b
        full = b.new_zeros(self.out.target)
        full[self.out.positions(self._index(tensors, "out_index"), b.device)] = b
        return full


@dataclass(frozen=True)
class StockLayout:
    """How to write a pruned model so that a stock loader serves it; built by :func:`stock_layout`.

    Attributes
    ----------
    format : str
        ``"stock"`` (``config`` + ``transform`` give a folder that ``AutoModelForCausalLM.from_pretrained``
        loads with outputs equal to the pruned model's) or ``"rebuild"`` (no exact stock form; use prunekit's
        rebuild format and ``prunekit.load_pruned``).
    config : dict
        The ``config.json`` content: ``model.config.to_dict()`` with only the widths and bias flags the layout
        needs changed (``architectures`` is filled with the model's class name when it is missing, since vLLM
        picks the model class from it).  For ``"rebuild"`` the config is unchanged.
    notes : tuple of str
        What was transformed and what it costs, or why no stock form exists.
    added_parameters : int
        Parameters the written model has beyond the pruned model (padding, scatter, zero biases); 0 when the
        stock config describes the pruned shapes as they are.
    vllm_exact : bool or None
        ``False`` where vLLM cannot load the output or would silently drop a tensor (rebuild format; a Qwen3
        ``o_proj`` bias), ``True`` where the vLLM model file of this ``model_type`` was read and reads every
        flag the layout sets (llama, gemma3_text), ``None`` where prunekit has not checked vLLM.
    """

    format: str
    config: dict
    notes: tuple[str, ...]
    added_parameters: int
    vllm_exact: Optional[bool] = None
    _specs: Mapping[str, _ModuleSpec] = field(default_factory=dict, repr=False, compare=False)
    _dropped: frozenset = field(default=frozenset(), repr=False, compare=False)

    def affects(self, name: str) -> bool:
        """True when :meth:`transform` changes, adds or drops tensors of the module owning state-dict key
        ``name`` (a padded/scattered weight, an added zero bias, a dropped index buffer or tied duplicate);
        False means the tensor is written as it is."""
        if name in self._dropped:
            return True
        spec = self._specs.get(name.rpartition(".")[0])
        return spec is not None and spec.changes

    def transform(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors to write for ``tensors``, any subset of the pruned model's state dict (qualified names).

        Weights are padded/scattered (and laid out as the stock module stores them), biases padded, zero biases
        added next to the weight of each module that needs one, CompactLinear index buffers and tied
        duplicates (e.g. ``lm_head.weight`` when embeddings are tied) dropped; other tensors pass through
        unchanged (same objects).  A CompactLinear's index buffers must be in the same subset as its weight
        and bias.  Applying this to disjoint subsets and merging the results equals applying it to their union.
        """
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key in self._dropped:
                continue
            module, _, leaf = key.rpartition(".")
            spec = self._specs.get(module)
            if spec is None or not spec.changes:
                out[key] = tensor
            elif leaf in ("in_index", "out_index") and spec.compact:
                continue
            elif leaf == "weight":
                out[key] = spec.weight(tensor, tensors)
                if spec.bias == "add":
                    out[f"{module}.bias"] = tensor.new_zeros(spec.out.target)
            elif leaf == "bias":
                out[key] = spec.bias_of(tensor, tensors)
            else:
                out[key] = tensor
        return out


# ------------------------------------------------------------------------------------------- analysis
def _is_compact(module: nn.Module) -> bool:
    return hasattr(module, "full_out") and hasattr(module, "full_in")



def _axes(adapter, module: nn.Module, out_target: int, in_target: int, out_groups: int = 1):
    out_f, in_f = (int(s) for s in adapter.get_weight(module).shape)
    compact = _is_compact(module)
    full_out = int(module.full_out) if compact else out_f
    full_in = int(module.full_in) if compact else in_f
    return (_Axis(out_f, full_out, out_target, compact and out_f != full_out, out_groups),
            _Axis(in_f, full_in, in_target, compact and in_f != full_in))


class _Builder:
    """Collects module specs and the reasons a stock form fails, for one model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapter = adapter_for(model)
        self.config = model.config.to_dict()
        self.model_type = str(self.config.get("model_type"))
        self.rules = _BIAS_RULES.get(self.model_type)
        self.specs: dict[str, _ModuleSpec] = {}
        self.blockers: list[str] = []
        self.notes: list[str] = []
        self.flags: dict[str, bool] = {}

    # ---------------------------------------------------------------- biases
    def resolve_flags(self, modules: dict[str, list[tuple[str, nn.Module]]]) -> None:
        """``modules[role]`` = [(qualified name, module)]; sets ``self.flags`` and records blockers."""
        arch = (self.config.get("architectures") or [type(self.model).__name__])[0]
        for role, entries in modules.items():
            rule = self.rules[role]
            with_bias = [n for n, m in entries if m.bias is not None]
            if isinstance(rule, str):
                self.flags[rule] = self.flags.get(rule, bool(self.config.get(rule, False))) or bool(with_bias)
            elif rule is False and with_bias:
                self.blockers.append(
                    f"{role} has a bias in {len(with_bias)} block(s) (first: {with_bias[0]}; e.g. FLAP's bias "
                    f"compensation), but transformers' {arch} builds {role} with bias=False and no config flag "
                    "switches it on, so a stock loader would drop it silently. Fix: save in prunekit's rebuild "
                    "format and load with prunekit.load_pruned.")

    def stock_bias(self, role: str) -> bool:
        rule = self.rules[role]
        return self.flags.get(rule, False) if isinstance(rule, str) else bool(rule)

    def add(self, name: str, module: nn.Module, role: str, out_target: int, in_target: int,
            out_groups: int = 1, target_transposed: bool = False) -> None:
        out_axis, in_axis = _axes(self.adapter, module, out_target, in_target, out_groups)
        has = module.bias is not None
        bias = ("keep" if has else "add") if self.stock_bias(role) else ("keep" if has else "none")
        self.specs[name] = _ModuleSpec(name, out_axis, in_axis, bias, _is_compact(module), is_conv1d(module),
                                       target_transposed)

    def set_config(self, key: str, value) -> None:
        if self.config.get(key) != value:
            self.config[key] = value


def _collect(builder: _Builder, roles) -> list[dict[str, tuple[str, nn.Module]]]:
    adapter, model = builder.adapter, builder.model
    blocks = []
    for i, block in enumerate(adapter.blocks(model)):
        prefix = adapter.block_prefix(model, i)
        blocks.append({r: (f"{prefix}.{r}", block.get_submodule(r)) for r in roles})
    by_role = {r: [b[r] for b in blocks] for r in roles}
    builder.resolve_flags(by_role)
    return blocks


def _full_out(adapter, module) -> int:
    return int(module.full_out) if _is_compact(module) else int(adapter.get_weight(module).shape[0])


def _full_in(adapter, module) -> int:
    return int(module.full_in) if _is_compact(module) else int(adapter.get_weight(module).shape[1])


def _llama_like(b: _Builder) -> None:
    ad, blocks = b.adapter, _collect(b, _LLAMA_ROLES)
    hidden = int(b.config["hidden_size"])
    hds, widths = set(), []
    for i, mods in enumerate(blocks):
        nq, _, hd = ad.attention_counts(b.model, i)
        nkv = _full_out(ad, mods[_V][1]) // hd
        hds.add(hd)
        widths.append((nq, nkv, _full_in(ad, mods[_DOWN][1])))
    if len(hds) != 1:
        b.blockers.append(f"head_dim differs across blocks {sorted(hds)}; the stock config has one head_dim.")
        return
    hd = hds.pop()
    ratios = {nq // nkv if nkv and nq % nkv == 0 else None for nq, nkv, _ in widths}
    if len(ratios) != 1 or None in ratios:
        b.blockers.append("query heads per KV head differ across blocks (or do not divide); the stock config has "
                          "one num_attention_heads / num_key_value_heads ratio.")
        return
    group = ratios.pop()
    nq_max, _, f_t = (max(w[k] for w in widths) for k in range(3))
    nq_t = _accepted_heads(b, nq_max, group, hd)
    if nq_t is None:
        return
    nkv_t = nq_t // group
    for mods in blocks:
        b.add(*mods[_Q], _Q, nq_t * hd, hidden)
        b.add(*mods[_K], _K, nkv_t * hd, hidden)
        b.add(*mods[_V], _V, nkv_t * hd, hidden)
        b.add(*mods[_O], _O, hidden, nq_t * hd)
        b.add(*mods[_GATE], _GATE, f_t, hidden)
        b.add(*mods[_UP], _UP, f_t, hidden)
        b.add(*mods[_DOWN], _DOWN, hidden, f_t)
    b.set_config("intermediate_size", f_t)
    b.set_config("num_attention_heads", nq_t)
    b.set_config("num_key_value_heads", nkv_t)
    if "head_dim" in b.config or nq_t * hd != hidden:
        b.set_config("head_dim", hd)
    _note_padding(b, "intermediate_size", [w[2] for w in widths], f_t)
    _note_padding(b, "KV heads", [w[1] for w in widths], nkv_t)
    if nq_t > nq_max:
        b.notes.append(f"num_attention_heads: {nq_max} is refused by the stock config class (e.g. LlamaConfig "
                       f"requires hidden_size % num_attention_heads == 0), so every block is padded to {nq_t} "
                       "heads (exact; costs parameters).")


def _accepted_heads(b: _Builder, nq_max: int, group: int, hd: int) -> Optional[int]:
    """The smallest head count >= ``nq_max`` (a multiple of the GQA group) that the stock config class
    accepts; padding heads is exact, so a count the class refuses is padded up."""
    hidden = int(b.config["hidden_size"])
    for nq in range(nq_max, max(hidden, nq_max) + 1, group):
        trial = {**b.config, "num_attention_heads": nq, "num_key_value_heads": nq // group, "head_dim": hd}
        if _config_error(trial) is None:
            return nq
    b.blockers.append(f"the stock config class accepts no head count in [{nq_max}, {hidden}] "
                      f"({_config_error({**b.config, 'num_attention_heads': nq_max})}).")
    return None


def _config_error(config: dict) -> Optional[str]:
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(**{k: v for k, v in config.items() if k != "prunekit"})
    except Exception as exc:  # noqa: BLE001 -- any refusal means "not this config"
        return f"{type(exc).__name__}: {exc}"
    return None


def _opt(b: _Builder) -> None:
    ad, blocks = b.adapter, _collect(b, _OPT_ROLES)
    hidden = int(b.config["hidden_size"])
    q, k, v, o = _OPT_ROLES[:4]
    hds = {int(ad.blocks(b.model)[i].self_attn.head_dim) for i in range(len(blocks))}
    if len(hds) != 1 or hidden % next(iter(hds)):
        b.blockers.append(f"OPT head_dim {sorted(hds)} does not divide hidden_size {hidden} uniformly.")
        return
    hd = hds.pop()
    heads = [_full_out(ad, mods[v][1]) // hd for mods in blocks]
    ffn = [_full_in(ad, mods["fc2"][1]) for mods in blocks]
    f_t = max(ffn)
    for mods in blocks:
        for r in (q, k, v):
            b.add(*mods[r], r, hidden, hidden)
        b.add(*mods[o], o, hidden, hidden)
        b.add(*mods["fc1"], "fc1", f_t, hidden)
        b.add(*mods["fc2"], "fc2", hidden, f_t)
    b.set_config("num_attention_heads", hidden // hd)
    b.set_config("ffn_dim", f_t)
    _note_padding(b, "ffn_dim", ffn, f_t)
    _note_padding(b, "attention heads (OPT derives head_dim = hidden_size / heads)", heads, hidden // hd)


def _gpt2(b: _Builder) -> None:
    ad, blocks = b.adapter, _collect(b, _GPT2_ROLES)
    hidden = int(b.config["n_embd"])
    hds = {int(ad.attention_counts(b.model, i)[2]) for i in range(len(blocks))}
    if len(hds) != 1 or hidden % next(iter(hds)):
        b.blockers.append(f"GPT-2 head_dim {sorted(hds)} does not divide n_embd {hidden} uniformly.")
        return
    hd = hds.pop()
    heads = [ad.attention_counts(b.model, i)[0] for i in range(len(blocks))]
    ffn = [_full_in(ad, mods["mlp.c_proj"][1]) for mods in blocks]
    f_t = max(ffn)
    for mods in blocks:
        b.add(*mods["attn.c_attn"], "attn.c_attn", 3 * hidden, hidden, out_groups=3, target_transposed=True)
        b.add(*mods["attn.c_proj"], "attn.c_proj", hidden, hidden, target_transposed=True)
        b.add(*mods["mlp.c_fc"], "mlp.c_fc", f_t, hidden, target_transposed=True)
        b.add(*mods["mlp.c_proj"], "mlp.c_proj", hidden, f_t, target_transposed=True)
    b.set_config("n_head", hidden // hd)
    if (b.config.get("n_inner") or 4 * hidden) != f_t:
        b.set_config("n_inner", f_t)
    _note_padding(b, "n_inner", ffn, f_t)
    _note_padding(b, "attention heads (GPT-2 derives head_dim = n_embd / n_head)", heads, hidden // hd)


def _note_padding(b: _Builder, what: str, widths: list[int], target: int) -> None:
    short = [i for i, w in enumerate(widths) if w < target]
    if short:
        b.notes.append(f"{what}: blocks {short} zero-padded to {target} (exact: padded units add 0 to the output; "
                       "costs parameters).")


_FAMILY_BUILDERS = {"llama": _llama_like, "gemma": _llama_like, "opt": _opt, "gpt2": _gpt2}


GENERIC_WIDTH_TRIALS = 32
"""Most stock-class checks :func:`_generic_widths` runs to find the config fields of the pruned widths."""


def _generic_widths(b: _Builder) -> None:
    """A model with no family rules (generic adapter) whose MLP channels were pruned: find the config fields that
    hold its MLP widths and set them to the kept widths -- kept only if the stock class then has exactly the
    written shapes (checked below, like every stock layout).

    Each pruned width maps an original unit count to one kept width (dense MLP ``intermediate_size`` /
    ``ffn_hidden_size``; Mixtral's experts ``intermediate_size``; Qwen2-MoE's experts ``moe_intermediate_size``
    and shared expert ``shared_expert_intermediate_size``); the candidate fields are the int config fields equal
    to an original count, and the assignments that change the fewest fields are tried first (at most
    :data:`GENERIC_WIDTH_TRIALS` stock checks).  The width of an expert fused back is read from its slice of the
    fused parameter (``expert_channels.downstream_width``: zero-padded to a multiple of
    ``experts.EXPERT_WIDTH_MULTIPLE``).  Without a match a dense model stays as is (the stock check then picks
    prunekit's rebuild format); a model with channel-pruned *fused* experts has no other form -- the rebuild
    format re-creates fused experts at their unpruned width -- so it raises.

    Raises
    ------
    ModelError
        Channel-pruned fused experts whose widths no stock config describes (e.g. different across blocks).
    """
    import itertools

    from .families.expert_channels import downstream_width

    groups = [g for i in range(len(b.adapter.blocks(b.model))) for g in b.adapter.coupled_groups(b.model, i)
              if g.kind in ("glu_channel", "ffn_channel")]
    if not groups:
        return
    widths = [(g.num_units, *downstream_width(b.model, g.downstream)) for g in groups]
    pairs = {(old, new) for old, new, _ in widths}
    fused = any(is_fused and new != old for old, new, is_fused in widths)
    padded = sorted({m.prunekit_padding for m in b.model.modules() if getattr(m, "prunekit_padding", None)})
    if padded:
        from .families.experts import EXPERT_WIDTH_MULTIPLE

        b.notes.append(f"MoE experts: kept widths zero-padded to a multiple of {EXPERT_WIDTH_MULTIPLE} (kept -> "
                       f"written: {', '.join(f'{k} -> {w}' for k, w in padded)}), since transformers' grouped_mm "
                       f"kernel needs 16-byte rows (exact: zero channels add 0; costs parameters; a recipe "
                       f"round_to of 8 avoids it).")
    if all(old == new for old, new in pairs):
        return
    shapes = _written_shapes(b.model, b.specs, _tied_duplicates(b.model))
    if _check_against_stock(b.config, shapes) is None:
        return  # the config already holds the kept widths (GenericAdapter.fix_config after an in-memory prune)
    news: dict[int, list[int]] = {}
    for old, new in sorted(pairs):
        news.setdefault(old, []).append(new)
    keys = [k for k, v in b.config.items() if isinstance(v, int) and not isinstance(v, bool) and v in news]
    options = [[b.config[k]] + [n for n in news[b.config[k]] if n != b.config[k]] for k in keys]
    trials = sorted(itertools.product(*options), key=lambda a: sum(v != b.config[k] for k, v in zip(keys, a)))
    for values in trials[:GENERIC_WIDTH_TRIALS]:
        changed = {k: v for k, v in zip(keys, values) if v != b.config[k]}
        if not changed or _check_against_stock(dict(b.config, **changed), shapes) is not None:
            continue
        for key, value in changed.items():
            b.notes.append(f"{key} = {value} (MLP channels kept of {b.config[key]}; found by checking the stock "
                           f"class).")
            b.set_config(key, value)
        return
    if fused:
        shown = ", ".join(f"{old} -> {sorted(set(n))}" for old, n in news.items())
        raise ModelError(f"no stock config describes the pruned MoE widths (original -> kept: {shown}): each kept "
                         f"width must be one value in every block, since the stock config has one field per width "
                         f"and prunekit's rebuild format re-creates fused experts at their unpruned width. Fix: "
                         f"prune every expert and block at one ratio (allocation='uniform', no per-group ratios), "
                         f"or prune with structure 'unstructured' or an N:M pattern such as '2:4'.")


def _tied_duplicates(model: nn.Module) -> frozenset:
    if not getattr(model.config, "tie_word_embeddings", False):
        return frozenset()
    tied = getattr(model, "all_tied_weights_keys", None)
    if tied is None:
        tied = getattr(model, "_tied_weights_keys", None) or {}
    return frozenset(tied if isinstance(tied, (dict, list, tuple, set, frozenset)) else ())


def _check_against_stock(config: dict, shapes: dict[str, tuple]) -> Optional[str]:
    """None when the stock class built from ``config`` (on the meta device) has exactly ``shapes``, else why."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "prunekit"})
        with torch.device("meta"):
            ref = AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:  # noqa: BLE001 -- a config the stock class rejects means "no stock form"
        return f"the stock class rejects the config ({type(exc).__name__}: {exc})"
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k not in _tied_duplicates(ref)}
    if theirs != shapes:
        diff = sorted(set(theirs.items()) ^ set(shapes.items()))[:4]
        return f"the stock model's tensors differ from the written ones (first: {diff}); please report this bug"
    return None


def _written_shapes(model: nn.Module, specs: Mapping[str, _ModuleSpec], dropped: frozenset) -> dict[str, tuple]:
    shapes = {}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        spec = specs.get(module)
        if key in dropped or (spec is not None and spec.compact and leaf in ("in_index", "out_index")):
            continue
        if spec is not None and leaf in ("weight", "bias"):
            w = (spec.out.target, spec.inp.target)
            shapes[key] = (w[::-1] if spec.target_transposed else w) if leaf == "weight" else (spec.out.target,)
            if leaf == "weight" and spec.bias == "add":
                shapes[f"{module}.bias"] = (spec.out.target,)
        else:
            shapes[key] = tuple(tensor.shape)
    return shapes


def stock_layout(model: nn.Module) -> StockLayout:
    """Decide how to write the pruned ``model`` for stock loaders (pure: the model is not modified).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM after ``prunekit.models.surgery.apply_`` (or unpruned).  Only module types,
        shapes, ``bias is None`` and the config are read, so its parameters may be on the meta device.

    Returns
    -------
    StockLayout
        ``format == "stock"`` when the model's own stock config class describes every written tensor after
        exact transforms (zero biases, zero padding, CompactLinear scatter); the layout is then checked against
        the stock class instantiated on the meta device.  Otherwise ``"rebuild"`` with ``notes`` saying why.

    Raises
    ------
    ModelError
        The architecture has no prunekit family adapter.
    """
    b = _Builder(model)
    base_config = dict(b.config)
    dropped = _tied_duplicates(model)
    if b.rules is None and b.adapter.name != "generic":
        b.blockers.append(f"prunekit knows no stock layout rules for model_type {b.model_type!r}.")
    elif b.rules is None:
        _generic_widths(b)  # generic adapter: the config field of a uniform MLP width, found by checking stock
    else:
        _FAMILY_BUILDERS[b.adapter.name](b)
    if not b.blockers:
        for flag, on in b.flags.items():
            if on and not base_config.get(flag, False):
                b.set_config(flag, True)
                b.notes.append(f"{flag}=True so the stock model keeps the biases pruning added; zero biases "
                               "are added to the other modules under this flag (exact; costs parameters).")
        if not b.config.get("architectures"):
            b.config["architectures"] = [type(model).__name__]
        if any(s.compact for s in b.specs.values()):
            b.notes.append("V/O channels (CompactLinear) scattered into full-width zero-filled v_proj rows and "
                           "o_proj columns (exact; the V/O parameter savings are not kept in the stock form).")
        problem = _check_against_stock(b.config, _written_shapes(model, b.specs, dropped))
        if problem is not None:
            b.blockers.append(f"no stock form: {problem}.")
    if b.blockers:
        return StockLayout(REBUILD, base_config, tuple(b.blockers), 0, False, {}, dropped)
    added = sum(s.added_parameters() for s in b.specs.values())
    vllm = _VLLM_READ.get(b.model_type)
    if b.model_type == "qwen3" and b.config.get("attention_bias"):
        vllm = False
        b.notes.append("vLLM: Qwen3Attention builds o_proj with bias=False and skips unknown .bias tensors, so "
                       "vLLM would silently drop the o_proj bias; transformers loads it exactly.")
    specs = {n: s for n, s in b.specs.items() if s.changes}
    return StockLayout(STOCK, b.config, tuple(b.notes), int(added), vllm, specs, dropped)


__all__ = ["StockLayout", "stock_layout", "STOCK", "REBUILD"]
