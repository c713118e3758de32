#!/usr/bin/env python3
"""Write the golden Megatron indexed datasets test_dataset.c reads.

Written by hand from the format (../shared/reference/formats.md and
Megatron-LM's megatron/core/datasets/indexed_dataset.py), numpy only, in
the order Megatron's IndexedDatasetBuilder does it:

  - add_item(tokens) appends the tokens to PREFIX.bin in the builder's
    dtype and records the sequence's length;
  - end_document() records the sequence count so far, after a leading 0;
  - finalize() writes PREFIX.idx: the 9-byte magic "MMIDIDX\\0\\0", version
    1 as <Q, the dtype code as <B, the sequence count and the document
    index count as <Q, then sizes as int32, pointers (each sequence's byte
    offset in the .bin: the running sum of length x itemsize) as int64,
    and the document indices as int64, all little-endian.

preprocess_data.py makes one sequence per document, or one per sentence
with --split-sentences, and --append-eod appends the end-of-document id to
a document's last sequence; the documents below do both.

Run from anywhere: python3 make_idx.py [OUTDIR]  (default: this folder).
The outputs are committed; rerunning must reproduce them byte for byte.
"""
import os
import struct
import sys

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron's DType codes
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
               np.float64: 6, np.float32: 7, np.uint16: 8}


class Builder:
    """The subset of Megatron's IndexedDatasetBuilder preprocess_data.py uses."""

    def __init__(self, prefix, dtype):
        self.prefix = prefix
        self.dtype = dtype
        self.bin = open(prefix + ".bin", "wb")
        self.sizes = []
        self.document_indices = [0]

    def add_item(self, tokens):
        array = np.array(tokens, dtype=self.dtype)
        self.bin.write(array.tobytes(order="C"))
        self.sizes.append(array.size)

    def end_document(self):
        self.document_indices.append(len(self.sizes))

    def finalize(self):
        self.bin.close()
        itemsize = np.dtype(self.dtype).itemsize
        pointers, offset = [], 0
        for size in self.sizes:
            pointers.append(offset)
            offset += size * itemsize
        with open(self.prefix + ".idx", "wb") as idx:
            idx.write(INDEX_MAGIC)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            idx.write(struct.pack("<Q", len(self.sizes)))
            idx.write(struct.pack("<Q", len(self.document_indices)))
            idx.write(np.array(self.sizes, dtype="<i4").tobytes(order="C"))
            idx.write(np.array(pointers, dtype="<i8").tobytes(order="C"))
            idx.write(np.array(self.document_indices, dtype="<i8").tobytes(order="C"))


def write(prefix, dtype, documents):
    """documents: a list of documents, each a list of sequences."""
    builder = Builder(prefix, dtype)
    for sequences in documents:
        for tokens in sequences:
            builder.add_item(tokens)
        builder.end_document()
    builder.finalize()


# GPT-2 BPE ids (vocabulary 50257, end of document 50256) stored as
# uint16, as preprocess_data.py picks for vocabularies under 65500. The
# last document holds 65535 to catch a reader that treats uint16 as signed.
GPT2_EOD = 50256
UINT16_DOCUMENTS = [
    [[464, 2068, 7586, 21831, GPT2_EOD]],
    [[40, 588, 33918, 13], [1212, 318, 3734, 13, GPT2_EOD]],  # two sentences
    [[65535, 0, 1, GPT2_EOD]],
]

# Llama-3-style ids (vocabulary 128256) need int32.
INT32_DOCUMENTS = [
    [[128000, 9906, 1917, 128001]],
    [[128000, 15339, 128255], [70000, 128001]],
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    write(os.path.join(out, "tiny_uint16_text_document"), np.uint16, UINT16_DOCUMENTS)
    write(os.path.join(out, "tiny_int32_text_document"), np.int32, INT32_DOCUMENTS)


if __name__ == "__main__":
    main()
