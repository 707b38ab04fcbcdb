/**
 * `refinery codec-server`: Temporal's remote codec protocol over node:http, so that the Temporal UI
 * and the `temporal` CLI show encrypted payloads as plain JSON. POST /encode and POST /decode take
 * and return `{"payloads": [{"metadata": {k: base64}, "data": base64}]}`; `X-Namespace` must be one
 * of the served namespaces; the browser UI is allowed in by CORS for the configured origins only.
 *
 * Anyone who can reach the port can decrypt: it binds 127.0.0.1 unless told otherwise.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Payload, PayloadCodec } from '@temporalio/common';

export const DEFAULT_CODEC_PORT = 8888;
/** The dev server's UI, under both names the README uses for it. */
export const DEFAULT_UI_ORIGINS = ['http://localhost:8233', 'http://127.0.0.1:8233'];
/** Whole histories are decoded in one request; Temporal caps a payload at 2 MB by default. */
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export interface CodecServerOptions {
  codec: PayloadCodec;
  /** `X-Namespace` values accepted (a request without the header is accepted too). */
  namespaces: string[];
  /** Default 8888; 0 picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Browser origins allowed by CORS (the Temporal UI); default {@link DEFAULT_UI_ORIGINS}. */
  corsOrigins?: string[];
  /** One line per failed request (never payload contents). */
  log?: (line: string) => void;
}

export interface CodecServer {
  url: string;
  close: () => Promise<void>;
}

/** A payload in the protocol's JSON form (proto3 JSON: bytes as base64). */
interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

class RequestError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export async function startCodecServer(options: CodecServerOptions): Promise<CodecServer> {
  const origins = new Set(options.corsOrigins ?? DEFAULT_UI_ORIGINS);
  const namespaces = new Set(options.namespaces);
  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const status = err instanceof RequestError ? err.status : 500;
      const message = err instanceof Error ? err.message : String(err);
      options.log?.(`${req.method ?? '?'} ${req.url ?? '?'} ${status}: ${message}`);
      if (!res.headersSent) reply(res, status, { error: message });
      else res.end();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (!origins.has(origin)) throw new RequestError(403, `origin ${origin} is not allowed (see --cors-origin)`);
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Access-Control-Allow-Credentials', 'true');
    }
    res.setHeader('Vary', 'Origin');
    const route = (req.url ?? '').split('?')[0];
    if (route !== '/encode' && route !== '/decode') throw new RequestError(404, 'not found: POST /encode or POST /decode');
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'Access-Control-Allow-Methods': 'POST, OPTIONS',
        'Access-Control-Allow-Headers': 'Content-Type, X-Namespace, Authorization',
        'Access-Control-Max-Age': '600',
      });
      res.end();
      return;
    }
    if (req.method !== 'POST') throw new RequestError(405, `${req.method ?? '?'} not allowed: use POST`);
    const namespace = req.headers['x-namespace'];
    if (typeof namespace === 'string' && !namespaces.has(namespace)) {
      throw new RequestError(403, `namespace "${namespace}" is not served here (serves ${[...namespaces].map((n) => `"${n}"`).join(', ')})`);
    }
    const payloads = parseBody(await readBody(req));
    let out: Payload[];
    try {
      out = route === '/encode' ? await options.codec.encode(payloads) : await options.codec.decode(payloads);
    } catch (err) {
      // Payloads that cannot be decrypted (unknown key id, altered data) are the caller's problem, not a crash.
      throw new RequestError(422, (err as Error).message);
    }
    reply(res, 200, { payloads: out.map(toJson) });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? DEFAULT_CODEC_PORT, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { address, port } = server.address() as AddressInfo;
  return { url: `http://${address.includes(':') ? `[${address}]` : address}:${port}`, close: () => closeServer(server) };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new RequestError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseBody(body: string): Payload[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new RequestError(400, 'body is not JSON: expected {"payloads": [...]}');
  }
  const payloads = (parsed as { payloads?: unknown } | null)?.payloads;
  if (!Array.isArray(payloads)) throw new RequestError(400, 'expected {"payloads": [...]}');
  return payloads.map((p: unknown, i) => fromJson(p, i));
}

function fromJson(value: unknown, index: number): Payload {
  const bad = (what: string) => new RequestError(400, `payloads[${index}]: ${what}`);
  if (typeof value !== 'object' || value === null) throw bad('expected an object');
  const { metadata, data } = value as { metadata?: unknown; data?: unknown };
  const bytes = (v: unknown, field: string): Uint8Array => {
    if (typeof v !== 'string' || !BASE64.test(v)) throw bad(`${field} must be base64`);
    return Buffer.from(v, 'base64');
  };
  if (metadata !== undefined && metadata !== null && (typeof metadata !== 'object' || Array.isArray(metadata))) throw bad('metadata must be an object');
  return {
    metadata: Object.fromEntries(Object.entries((metadata ?? {}) as Record<string, unknown>).map(([k, v]) => [k, bytes(v, `metadata.${k}`)])),
    ...(data === undefined || data === null ? {} : { data: bytes(data, 'data') }),
  };
}

function toJson(payload: Payload): JsonPayload {
  return {
    metadata: Object.fromEntries(Object.entries(payload.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
    ...(payload.data ? { data: Buffer.from(payload.data).toString('base64') } : {}),
  };
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((err) => (err ? reject(err) : resolve()));
    server.closeAllConnections();
  });
}
