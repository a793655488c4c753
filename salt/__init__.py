"""salt: SALT video self-supervised learning (Static-teacher Asymmetric Latent Training).

Stage 1 trains a video ViT teacher by masked-pixel reconstruction; stage 2 freezes it and trains
a student ViT plus a narrow predictor to regress the teacher's latents at masked positions.
Subpackages: ``salt.models`` (plain nn.Modules), ``salt.data`` (video pipeline),
``salt.probes`` (frozen-backbone evaluation). Importing ``salt`` stays lightweight: it must not
pull in Lightning, so ``import salt.models`` remains free of it.
"""
