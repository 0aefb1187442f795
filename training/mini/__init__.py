"""Training recipe for the miniature latent diffusion model shipped as ``mimicshield/weights/mini``.

The model is a demonstration and test fixture: it has the same component classes as Stable
Diffusion (AutoencoderKL, UNet2DConditionModel with cross-attention, CLIPTextModel/CLIPTokenizer,
a scaled-linear DDPM schedule) but is tiny and trained on a few thousand 64x64 images on a CPU.
It does not represent, and protection measured on it says nothing about, real Stable Diffusion.

Stages (each resumable; ``python -m training.mini all`` runs them in order):

- ``sources``   fetch Debian image packages and list the usable files with honest captions
- ``prepare``   decode and crop every image once into a cached uint8 array, split by file
- ``tokenizer`` learn a byte-level BPE vocabulary from the caption words
- ``vae``       train the AutoencoderKL
- ``latents``   encode the training images once with the trained VAE
- ``unet``      train the UNet and the text encoder on those latents
- ``export``    write the fp16 diffusers pipeline folder into the package
- ``evaluate``  measure held-out quality and write ``metrics.json`` next to the model
"""
