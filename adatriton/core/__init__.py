"""The data: output strides and conversions, level maps, element layouts and multi-resolution maps."""
