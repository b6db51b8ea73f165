"""The classic segmentation families, each the defining part of its paper built on the planned topology
(stages, per-axis kernels and strides, features): FCN, SegNet, V-Net, UNet++, PSPNet and HRNet. The U-Net
family (plain, residual encoder, DeepLab) is autoseg.model.network; its registry lists every family.

Every network here takes (configuration, input channels, classes, *, deep_supervision) and returns the logits
at full resolution, or in training with deep supervision a list of outputs whose first is at full resolution
(autoseg.model.network.supervision_weights gives each output's loss weight).
"""
