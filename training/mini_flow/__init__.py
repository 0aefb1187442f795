"""Training recipe for the miniature flow-matching model shipped as ``weights/mini-flow``.

The Stable Diffusion 3 sibling of ``training/mini``: the same component classes as SD3
(AutoencoderKL with 16 latent channels and a shift/scale normalisation, SD3Transformer2DModel
(MMDiT), two CLIPTextModelWithProjection encoders and no T5, FlowMatchEulerDiscreteScheduler,
rectified-flow training), tiny, trained on the miniature's 64x64 crops on a CPU. It does not
represent, and protection measured on it says nothing about, real Stable Diffusion 3.

Stages (each resumable; ``python -m training.mini_flow all`` runs them in order):

- ``sources``     the miniature's Debian packages (shared with it, fetched once)
- ``prepare``     the miniature's crops and held-out split, without source files above 40 MP
- ``tokenizer``   the miniature's BPE learned from those captions
- ``vae``         train the 16-channel AutoencoderKL (with the miniature's VAE stage)
- ``latents``     encode the crops once; measure shift_factor and scaling_factor
- ``transformer`` train the MMDiT and both text encoders with the flow-matching objective
- ``export``      write the fp16 StableDiffusion3Pipeline folder into the package
- ``evaluate``    measure held-out quality and write ``metrics.json`` next to the model
"""
