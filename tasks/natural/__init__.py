"""Natural-image adapter: Pascal VOC, Cityscapes and COCO (DeepLabV3+), plus a synthetic VOC-layout default."""
