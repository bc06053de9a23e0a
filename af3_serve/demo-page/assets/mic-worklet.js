// The live mode's microphone tap, an AudioWorklet (a file: the page's policy allows no
// inline or blob: scripts). It turns the mono input into 16-bit little-endian PCM at
// `rate` and posts one ArrayBuffer of it every `chunkMs`.
"use strict";

class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { rate, chunkMs } = options.processorOptions;
    this.step = sampleRate / rate; // input samples per output sample
    this.size = Math.round((rate * chunkMs) / 1000); // samples per chunk
    this.chunk = new DataView(new ArrayBuffer(this.size * 2));
    this.filled = 0;
    this.position = 0; // the next output sample, in input samples from this block's start
    this.last = 0; // the previous block's last sample (index -1 of this block)
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.chunk.setInt16(this.filled * 2, clipped * 0x7fff, true);
    this.filled += 1;
    if (this.filled === this.size) {
      const buffer = this.chunk.buffer;
      this.port.postMessage(buffer, [buffer]);
      this.chunk = new DataView(new ArrayBuffer(this.size * 2));
      this.filled = 0;
    }
  }

  // Linear interpolation between input samples; at the context's own rate (the page asks
  // for 24 kHz, which Chromium grants) every step is 1 and samples pass through unchanged.
  process(inputs) {
    const input = inputs[0][0];
    if (!input) return true; // no input connected (yet)
    for (; this.position < input.length - 1; this.position += this.step) {
      const i = Math.floor(this.position);
      const before = i < 0 ? this.last : input[i];
      this.push(before + (input[i + 1] - before) * (this.position - i));
    }
    this.position -= input.length;
    this.last = input[input.length - 1];
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
