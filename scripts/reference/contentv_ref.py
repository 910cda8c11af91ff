"""Reference (PyTorch) implementation of the ContentV-8B pieces that diffusers 0.33.1 does not ship.

Written from docs/contentv-spec.md (sections 2, 4 and 5), which follows bytedance/ContentV's
`contentv_transformer.py` and `contentv_pipeline.py`. Only what the fixtures need is here:

* `SD3Transformer3DModel`: SD3Transformer2DModel with a per-frame 2x2 Conv2d patch embedding, a fixed 3D sin-cos
  position table added to the tokens, and a 3D unpatchify. Its config keys, module tree and state-dict names equal
  the real checkpoint's.
* `ContentVPipeline`: the loading layout of the real pipeline (so `encode_prompt` of StableDiffusion3Pipeline can
  be reused as is) and a hand-written `generate` with the reference's precision semantics.
"""

from typing import Optional

import numpy as np
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.models.embeddings import get_3d_sincos_pos_embed
from diffusers.video_processor import VideoProcessor


class SD3PatchEmbed(torch.nn.Module):
    """Per-frame Conv2d(k=s=patch) patch embedding plus the fixed 3D sin-cos table (spec 5.3)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = torch.nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def pos_table(self, t: int, hp: int, wp: int, device=None) -> torch.Tensor:
        # [T, H'*W', D]; w coordinate first (spatial_size=(W', H')), positions of the spatial grid doubled (scale 0.5)
        return get_3d_sincos_pos_embed(
            embed_dim=self.embed_dim,
            spatial_size=(wp, hp),
            temporal_size=t,
            spatial_interpolation_scale=0.5,
            temporal_interpolation_scale=1.0,
            device=device,
            output_type="pt",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # b c t h w -> (b t) c h w
        x = self.proj(x)  # (b t) D h' w'
        d, hp, wp = x.shape[1:]
        x = x.reshape(b, t, d, hp, wp).permute(0, 1, 3, 4, 2).reshape(b, t * hp * wp, d)  # -> b (t h w) D
        pe = self.pos_table(t, hp, wp, device=x.device)
        pe = pe.flatten(0, 1).unsqueeze(0).to(device=x.device, dtype=x.dtype)
        return x + pe


class SD3Transformer3DModel(SD3Transformer2DModel):
    """ContentV's MMDiT. Only these six arguments are read from config.json; everything else is fixed (spec 5.1)."""

    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        patch_size: int = 2,
        num_layers: int = 38,
        num_attention_heads: int = 38,
        attention_head_dim: int = 64,
    ):
        inner_dim = num_attention_heads * attention_head_dim
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            patch_size=patch_size,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            caption_projection_dim=inner_dim,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        )
        self.inner_dim = inner_dim
        # replaces the cropped 2D PatchEmbed of SD3 (and with it its pos_embed buffer)
        self.pos_embed = SD3PatchEmbed(patch_size=patch_size, in_channels=in_channels, embed_dim=inner_dim)

    def unpatchify(self, x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        # b (t h w) (p q c) -> b c t (h p) (w q)
        b = x.shape[0]
        p = self.config.patch_size
        c = self.config.out_channels
        hp, wp = height // p, width // p
        x = x.reshape(b, frames, hp, wp, p, p, c)  # b t h w p q c
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # b c t h p w q
        return x.reshape(b, c, frames, hp * p, wp * p)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        pooled_projections: torch.Tensor = None,
        timestep: torch.Tensor = None,
        joint_attention_kwargs=None,
        return_dict: bool = True,
    ):
        _, _, frames, height, width = hidden_states.shape
        hidden_states = self.pos_embed(hidden_states)
        temb = self.time_text_embed(timestep, pooled_projections)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                temb=temb,
                joint_attention_kwargs=joint_attention_kwargs,
            )
        hidden_states = self.norm_out(hidden_states, temb)
        hidden_states = self.proj_out(hidden_states)
        out = self.unpatchify(hidden_states, frames, height, width)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


class ContentVPipeline(StableDiffusion3Pipeline):
    """Same registered modules and constants as ContentV's pipeline (its __init__ does not call SD3's, whose
    vae_scale_factor would need an AutoencoderKL config)."""

    def __init__(
        self,
        transformer,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        text_encoder_3,
        tokenizer_3,
    ):
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            text_encoder_3=text_encoder_3,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            tokenizer_3=tokenizer_3,
            transformer=transformer,
            scheduler=scheduler,
        )
        self.vae_scale_factor_temporal = 2 ** sum(self.vae.temperal_downsample) if getattr(self, "vae", None) else 4
        self.vae_scale_factor = 2 ** len(self.vae.temperal_downsample) if getattr(self, "vae", None) else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)
        self.tokenizer_max_length = self.tokenizer.model_max_length if self.tokenizer is not None else 77
        self.patch_size = self.transformer.config.patch_size if self.transformer is not None else 2

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        latents: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float = 6.0,
        max_sequence_length: int = 256,
        record: Optional[dict] = None,
    ):
        """ContentVPipeline.__call__ (spec section 2) from given initial noise, output_type "np".

        `latents` must already have the dtype the reference uses (prompt_embeds.dtype). Intermediate tensors are
        written to `record` if given. Returns float frames [B, F, H, W, 3] in [0, 1] (numpy) like the pipeline."""
        rec = record if record is not None else {}
        device = latents.device
        pe, npe, pooled, npooled = self.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        rec["prompt_embeds"], rec["negative_prompt_embeds"] = pe, npe
        rec["pooled_prompt_embeds"], rec["negative_pooled_prompt_embeds"] = pooled, npooled
        latents = latents.to(device=device, dtype=pe.dtype)
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        rec["timesteps"] = timesteps.clone()
        rec["sigmas"] = self.scheduler.sigmas.clone()
        for i, t in enumerate(timesteps):
            timestep = t.expand(latents.shape[0])
            v_c = self.transformer(
                hidden_states=latents, timestep=timestep, encoder_hidden_states=pe, pooled_projections=pooled,
                return_dict=False,
            )[0]
            v = v_c
            if guidance_scale > 1:
                v_u = self.transformer(
                    hidden_states=latents, timestep=timestep, encoder_hidden_states=npe, pooled_projections=npooled,
                    return_dict=False,
                )[0]
                v = v_u + guidance_scale * (v_c - v_u)
                rec[f"step{i}.v_uncond"] = v_u
            rec[f"step{i}.v_cond"] = v_c
            rec[f"step{i}.v"] = v
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
            rec[f"step{i}.latents"] = latents
        latents = latents.to(self.vae.dtype)
        mean = torch.tensor(self.vae.config.latents_mean).view(1, self.vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, self.vae.config.z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        latents = latents / inv_std + mean
        rec["vae_input"] = latents
        video = self.vae.decode(latents, return_dict=False)[0]
        rec["video"] = video
        frames = self.video_processor.postprocess_video(video, output_type="np")
        return frames


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """diffusers.utils.export_to_video: (frame * 255).astype(np.uint8), i.e. truncation."""
    return (frames * 255).astype(np.uint8)


__all__ = [
    "SD3PatchEmbed",
    "SD3Transformer3DModel",
    "ContentVPipeline",
    "frames_to_uint8",
    "AutoencoderKLWan",
    "FlowMatchEulerDiscreteScheduler",
]
