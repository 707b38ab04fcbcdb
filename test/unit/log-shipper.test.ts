/** Where the log shipper cuts a part (activities/log-shipper.ts); the shipping itself: test/integration/log-shipper.test.ts. */
import { describe, expect, it } from 'vitest';
import { partCut } from '../../activities/log-shipper.js';

describe('partCut', () => {
  const b = (s: string) => Buffer.from(s);
  it('cuts after the last line end', () => {
    expect(partCut(b('a\nb\nc'), 100)).toBe(4);
    expect(partCut(b('a\nb\n'), 100)).toBe(4);
    // Progress bars' carriage returns end a piece of a log too (JSON lines never hold a raw CR).
    expect(partCut(b('10%\r20%\rhalf'), 100)).toBe(8);
    expect(partCut(b('x\r\ny'), 100)).toBe(3);
  });
  it('waits for the end of a line, unless the chunk is a full part or the file ends', () => {
    expect(partCut(b('no newline yet'), 100)).toBe(0);
    expect(partCut(b('x'.repeat(100)), 100)).toBe(100);
    expect(partCut(b('tail without newline'), 100, true)).toBe(20);
    expect(partCut(Buffer.alloc(0), 100)).toBe(0);
  });
});
