"""Import checkpoints of the RxLM reference implementation (RxT-Alpha / RxT-Beta) into reactor-rt.

An RxLM checkpoint is a directory with ``config.json`` (``decoder_config``, ``encoder_config``,
``memory_attention_config``, ``tokenizer_config``, ``memory_attention_variant``) and
``model.safetensors`` (``decoder.model.*``, ``encoder.model.*``, ``memory_attention.model.*``).
`convert` maps it onto an RxTConfig and writes a reactor-rt checkpoint. The options it switches on
for imported models: per-block head counts, biased gated FFNs and their activation, gated attention,
MoE with one or several (softmax-mixed) shared experts, global or per-expert biases, a bfloat16
router and the legacy per-module expert layout, an own output head, stateless layers, and the
staged memory update with RxLM's slot gates and grouped interlayer means.

Reference defects handled (rxlm 0.3.80, checked against its source):

* tied tensors are dropped on save: the shared embedding and the shared STM buffer are written under
  one of their names only (safetensors keeps one name per storage); the converter accepts either
  name, and when both survive (a model saved before ``share_components()``) takes the copy the
  reference runs: the encoder's embedding and the memory attention's STM;
* the memory-attention dispatch of ``RxTAlpha`` builds the *self-interlayer* network (with interlayer
  gates) for ``memory_attention_variant="interlayer"``, not the documented interlayer one: the
  converter maps both to reactor-rt's "gated-self-interlayer" variant in the staged layout, which is
  what the reference actually runs (and whose weights the file holds). A gated checkpoint without
  interlayer gates comes from an rxlm whose dispatch builds the interlayer network it names: it maps to
  the staged "interlayer" variant (attention to the normalised layer mean). "grouped-self-interlayer"
  maps to "gated-self-interlayer" with ``memory_groups`` = ``num_groups`` (interlayer means per group);
* the grouped variant's forward returns None instead of the new STM (no effect on the weights; the
  parity script reads the STM back instead);
* with ``use_flash_attention`` the reference zeroes padded positions instead of masking them, so
  padded keys still take attention weight in its encoder and memory attention; reactor-rt masks
  them. Unpadded inputs (one interaction at a time) give the same results either way;
* ``tokenizer_config`` ids are checked against the tokenizer's special tokens; tokens reactor-rt needs
  and the checkpoint never used (e.g. ``[R]``) are added when the vocabulary has room.

Not supported (UnsupportedCheckpointError names each one): non-gated FFNs, LayerNorm blocks, a
LayerNorm output head norm, hybrid/linear attention layers, NoPE, reversed SQA, an MoE encoder, a
float16 router, memory norms other than classic RMS, a group count that does not divide the layers,
a vectorized MoE still carrying its legacy experts, and components that differ in width, heads, STM
size, layer count or RoPE base. Tensors the mapping does not consume are an error too, so an option
this converter does not know is never dropped silently. The encoder's MLM head is not part of an
RxLM checkpoint; the converted model gets a fixed-seed one (not used for inference).
"""

from reactor_rt.rxlm.config_map import UnsupportedCheckpointError, map_config
from reactor_rt.rxlm.convert import convert, load_rxlm

__all__ = ["UnsupportedCheckpointError", "convert", "load_rxlm", "map_config"]
