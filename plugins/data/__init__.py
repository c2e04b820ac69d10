"""Data plugins: the embedded digits set, torchvision image sets and generated 2-D toys."""
