#!/usr/bin/env bash
# How to get MS-COCO for captioner (needs internet and ~20 GB; never run by the tests).
#
#   bash scripts/download_coco.sh [DEST]      # default DEST=data/coco
#
# Afterwards:
#   captioner train --config configs/coco_karpathy.yaml data.root=DEST
set -euo pipefail
DEST=${1:-data/coco}
mkdir -p "$DEST"
cd "$DEST"

# COCO 2014 images (Karpathy's split is defined on train2014 + val2014).
for f in train2014 val2014; do
  [ -d "$f" ] || { curl -fLO "http://images.cocodataset.org/zips/$f.zip" && unzip -q "$f.zip" && rm "$f.zip"; }
done

# Official caption annotations (2014 and 2017).
for f in annotations_trainval2014 annotations_trainval2017; do
  [ -f "annotations/.$f" ] || { curl -fLO "http://images.cocodataset.org/annotations/$f.zip" && unzip -qo "$f.zip" && rm "$f.zip" && touch "annotations/.$f"; }
done

# Karpathy's split file (dataset_coco.json, also dataset_flickr8k.json and dataset_flickr30k.json).
[ -f dataset_coco.json ] || {
  curl -fLO "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
  unzip -qo caption_datasets.zip && rm caption_datasets.zip
}
echo "COCO is in $(pwd): images in train2014/ val2014/, captions in annotations/, split in dataset_coco.json"
