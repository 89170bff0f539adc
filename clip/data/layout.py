"""File names of the on-disk dataset layouts, shared by the tools that write and read them."""

# Conceptual Captions layout: one image_name<TAB>caption line per image, next to images/.
CAPTIONS_FILE = "img_cap.csv"
IMAGES_FOLDER = "images"
# ImageNet map-file layout: one file<TAB>label line per image, files relative to its folder.
MAP_FILE = "val_official_clean.csv"
