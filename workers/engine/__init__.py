"""Sift's compute engine: LESS / TracIn data valuation with LoRA gradients (no service code).

The pipeline, one module per step (seed 002 §2 and app. F; Xia et al. 2024):
 1. ``models``     load a causal LM and tokenizer (or the builtin tiny Llama); ``data`` turns
                   conversations into token ids with the loss on the response only.
 2. ``lora``       attach LoRA adapters θ; their flat gradients live in R^P in a fixed order.
 3. ``warmup``     train θ on a random few % of the pool for E epochs; keep θ^e, Adam moments
                   and the mean learning rate η̄_e of every epoch.
 4. ``gradients``  per-example gradients ∇θ L(z; θ^e): Adam features Γ for pool data,
                   plain gradients for validation probes.
 5. ``projection`` random projection R^P -> R^d (d ~ 8192) with a seeded Rademacher Π.
 6. ``features``   steps 4-5 over a dataset, stored with the provenance that makes them comparable.
 7. ``influence``  Inf(z_i, z_v) = Σ_e w_e cos(·,·) (LESS) or Σ_e η̄_e <·,·> (TracIn on
                   plain gradients; ``tracin_adam`` on Adam pool features); mean over each
                   validation subtask, max over subtasks. ``datainf``: influence functions.
 8. ``selection``  top-k, top-fraction or threshold on the scores, deterministic ties.

Each valuation method (LESS, TracIn, NICE, DataInf, self-influence, ...) is one
``valuation_method.ValuationMethod`` declared next to its formula: the features it reads, the
checkpoints, the projection, its scorer over the streamed pool; ``methods`` lists them.

Errors are the classes of ``errors``; ``synthetic`` builds a planted-task pool for tests/demos.
This package imports nothing heavy at import time; its submodules need torch, transformers, peft.
"""
