"""Synthetic ultra-resolution data (``msn synth``) built so that the MSN premise holds.

``msn synth OUT_DIR [--slides 4] [--size 4096] [--seed 0] [--kind wsi|photo]`` writes slides,
annotations and ``manifest.csv`` (``slide,annotations,split``; paths relative to OUT_DIR), so
the whole pipeline and the tests run on a fresh machine without real slides.

**Slides (``--kind wsi``).** Pyramidal tiled TIFFs (JPEG, 256-px tiles, levels at downsample
1, 4, 16 and 64, 0.5 µm/px at level 0) that OpenSlide opens as ``generic-tiff``, with
QuPath GeoJSON (named in the manifest) and ASAP XML annotations beside each slide for BACH's
four classes, in level-0 pixels. Every label is a polygon and the image is painted from the
same vertices, so the annotations are exact (a pixel belongs to a polygon when its centre does).
Tissue fragments lie on a white background: each annotated region is wrapped in a band of
unannotated stroma (painted with the *normal* texture, so reading unannotated tissue as
*normal*, BACH's convention, or as ignore (255) are both consistent with the image).

The four classes are designed so that the scales of the paper are each needed:

- *normal* vs *benign* differ **only in fine detail**: both are the same pink with purple
  nuclei-like ink, balanced to the same mean colour; normal carries round nuclei on a jittered
  8-px grid, benign thin wavy diagonal fibres of 8-px period. The 8-px periods divide 16, so a
  16x box downsample (X3) averages both to the same flat colour: only X1 (and barely X2)
  can tell them apart.
- *in situ* vs *invasive* differ **only in wide context**: both carry the same darker tumour
  texture (larger, denser nuclei). An in situ region is a large rounded duct (about 850-1200 px
  across) whose outer band (about 60-80 px) is a dark wall; an invasive region is a spiky
  star-shaped mass with small satellite nests scattered around it (one polygon per part).
  A 256-px X1 window inside either sees the same texture and nothing else, while X3 (256 px at
  16x, a 4096-px field of view) sees the wall or the spikes and satellites around it.
- the two pairs differ in mean colour (pink vs purple), visible at every scale.

Region sizes and the texture periods are fixed in level-0 pixels for 256-px patches (scaled by
``patch / 256``); slides smaller than the X3 field of view (``16 * patch``) get proportionally
smaller structures so that tiny test slides still hold every class. Classes are filled to
roughly equal areas (each about 5% of a 4096-px slide, about half the tissue annotated).

**Photographs (``--kind photo``).** ISIC-like JPEGs (``size`` is the long side, 4:3) with a
PNG mask beside each: 0 = normal skin, 255 = lesion (the ISIC convention). See
:mod:`msn_cli.synth.photo` for the design (fine pigment network vs flat look-alike freckles).

**Splits.** With ``n >= 3`` slides, test and sub-train get ``max(1, n // 4)`` slides each and
train the rest, in that order of the file names: 3 -> 1/1/1, 4 -> 2/1/1, 8 -> 4/2/2, 10 -> 6/2/2.

Everything is deterministic for a seed (same bytes). Speed, 1 process: a 4096 x 4096 slide in
about 0.5 s, a 20480 x 20480 one in about 6 s with under 350 MB of memory; a 4096 x 3072 photo
in about 1.3 s.
"""

from msn_cli.synth.generate import KINDS, MANIFEST, MANIFEST_COLUMNS, generate, split_counts
from msn_cli.synth.layout import CLASS_COLORS, CLASS_NAMES
from msn_cli.synth.photo import PHOTO_CLASSES, PhotoTruth, write_synthetic_photo
from msn_cli.synth.slide import SlideTruth, write_synthetic_slide

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "KINDS",
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "PHOTO_CLASSES",
    "PhotoTruth",
    "SlideTruth",
    "generate",
    "split_counts",
    "write_synthetic_photo",
    "write_synthetic_slide",
]
