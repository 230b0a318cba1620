"""Names of the conditioning entries the SteadyDancer nodes write and the model wrapper reads.

A conditioning is ComfyUI's list of ``[tensor, dict]``; these are keys of that dict. They carry raw
VAE latents (the model wrapper applies the Wan latent normalisation) and CLIP vision outputs.
"""

#: VAE latent of the pose images [B, 16, T, h, w] (positive poses, or negative ones for the pose-uncond pass).
POSE_LATENT = "steadydancer_pose_latent"
#: VAE latent of the reference image alone [B, 16, 1, h, w] (the ``ref_x`` token frame).
REF_IMAGE_LATENT = "steadydancer_ref_image_latent"
#: VAE latent of the first *positive* pose frame [B, 16, 1, h, w] (``ref_c``; also in the negative-pose pass).
REF_POSE_LATENT = "steadydancer_ref_pose_latent"
#: CLIP vision output of the first positive pose frame (its features are summed onto the reference's).
POSE_CLIP_VISION_OUTPUT = "steadydancer_clip_vision_output_pose"
#: Scales of the spatial / temporal pose-branch outputs (1.0 = the official model).
POSE_STRENGTH_SPATIAL = "steadydancer_pose_strength_spatial"
POSE_STRENGTH_TEMPORAL = "steadydancer_pose_strength_temporal"
