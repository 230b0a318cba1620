"""Multi-GPU inference on ``torch.distributed`` (under ``torchrun``); no ComfyUI here.

* ``sequence_parallel`` - Ulysses: tokens split over a group, heads exchanged with all-to-all in self-attention;
* ``cfg_parallel``      - the DC-CFG passes of a step on different ranks, gathered before the combine;
* ``fsdp``              - the DiT's weights sharded with FSDP2;
* ``session``           - the layout (cfg x ulysses mesh), the process groups, the DiT built for them;
* ``pipeline``          - rank 0 drives the standalone pipeline, the other ranks serve the DiT;
* ``cli``               - ``--ulysses``, ``--cfg-parallel``, ``--dit-fsdp`` for ``animate``;
* ``memory``            - weights and activations per GPU of a layout (computed, for --dry-run and the README);
* ``comm``              - the collectives with autograd and a byte counter.
"""
