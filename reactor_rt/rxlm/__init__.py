"""Import checkpoints of the RxLM reference implementation (RxT-Alpha / RxT-Beta) into reactor-rt.

An RxLM checkpoint is a directory with ``config.json`` (``decoder_config``, ``encoder_config``,
``memory_attention_config``, ``tokenizer_config``, ``memory_attention_variant``) and
``model.safetensors`` (``decoder.model.*``, ``encoder.model.*``, ``memory_attention.model.*``).
`convert` maps it onto an RxTConfig (the options for imported models: per-block head counts, biased
gated FFNs and activations, gated attention, MoE with a shared expert, global or per-expert biases and
the legacy per-module expert layout, an untied output head, stateless layers and the staged memory
update with RxLM's slot gates) and writes a reactor-rt checkpoint.

Reference defects handled (rxlm 0.3.80, checked against its source):

* tied tensors are dropped on save: the shared embedding and the shared STM buffer are written under
  one of their names only (safetensors keeps one name per storage); the converter accepts either
  name and uses the same tensor for both places;
* the memory-attention dispatch of ``RxTAlpha`` builds the *self-interlayer* network (with interlayer
  gates) for ``memory_attention_variant="interlayer"``, not the documented interlayer one: the
  converter maps both to reactor-rt's "gated-self-interlayer" variant in the staged layout, which is
  what the reference actually runs (and whose weights the file holds);
* ``tokenizer_config`` ids are checked against the tokenizer's special tokens; tokens reactor-rt needs
  and the tokenizer lacks (e.g. ``[R]``) are added when the vocabulary has room.

Not supported (a clear UnsupportedCheckpointError names each one): non-gated FFNs, LayerNorm blocks,
a LayerNorm output head norm, hybrid/linear attention layers, NoPE, reversed SQA, more than one shared
expert, an MoE encoder, memory norms other than classic RMS, the grouped-self-interlayer variant, a
vectorized MoE still carrying its legacy experts, and components that differ in width, heads, STM
size, layer count or RoPE base. Tensors the mapping does not consume are an error too, so an option
this converter does not know cannot be dropped silently.
The encoder's MLM head is not part of an RxLM
checkpoint; the converted model gets a freshly initialised one (not used for inference).
"""

from reactor_rt.rxlm.config_map import UnsupportedCheckpointError, map_config
from reactor_rt.rxlm.convert import convert, load_rxlm

__all__ = ["UnsupportedCheckpointError", "convert", "load_rxlm", "map_config"]
