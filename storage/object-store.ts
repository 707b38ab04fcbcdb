/**
 * A thin, endpoint-agnostic layer over the `minio` client (any S3 API): just the operations
 * Refinery needs, with keys always relative to one bucket.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import { Client } from 'minio';
import { storageConfigFromEnv, type StorageConfig } from './config.js';
import { Slots } from './slots.js';

/** Files up to this size go up in one PUT; larger ones in parts of (at least) this size. */
const PART_SIZE = 32 * 1024 * 1024;
/** The largest file putFileHashed sends in one PUT (larger ones go up in parts). */
export const SINGLE_PUT_MAX_BYTES = PART_SIZE;
/** Parts in flight per store, across all files: bounds the memory of uploads (× PART_SIZE). */
const PARTS_IN_FLIGHT = 6;
/** Downloads read and write in 1 MiB chunks (minio-js streams 16–64 KiB ones: twice the CPU per byte). */
const DOWNLOAD_CHUNK = 1024 * 1024;
const S3_MAX_PARTS = 10_000;
/** User metadata under which putFileHashed records an object's sha256 (`x-amz-meta-sha256`; read back by `head`). */
const SHA256_META = 'sha256';
const SHA256_META_HEADER = `x-amz-meta-${SHA256_META}`;

export interface PutFileOptions {
  /**
   * The file's sha256 when the caller already has it: sent as metadata at the start of a multipart
   * upload (a small file's hash is known before its PUT anyway); the upload fails when what was read
   * does not hash to it (the file changed).
   */
  sha256?: string;
  /** Called as bytes are acknowledged by the store: per part for a large file, once for a small one. */
  onBytes?: (bytes: number) => void;
  /** Stops before the next part (or before the PUT); an upload in flight is aborted, not completed. */
  signal?: AbortSignal;
}

export interface ObjectInfo {
  key: string;
  size: number;
  /** Objects only (not common prefixes). */
  lastModified?: Date;
}

export class ObjectStore {
  readonly client: Client;
  readonly bucket: string;
  /** Sends multipart parts as UNSIGNED-PAYLOAD: see putFileHashed. */
  private readonly unsignedClient: Client;
  private readonly partSlots = new Slots(PARTS_IN_FLIGHT);
  private readonly agent: http.Agent;

  constructor(readonly config: StorageConfig = storageConfigFromEnv()) {
    const make = () =>
      new Client({
        endPoint: config.endPoint,
        port: config.port,
        useSSL: config.useSSL,
        accessKey: config.accessKey,
        secretKey: config.secretKey,
        region: config.region,
      });
    this.client = make();
    this.unsignedClient = make();
    this.unsignedClient.enableSHA256 = false;
    this.agent = config.useSSL ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    this.bucket = config.bucket;
  }

  /** s3://bucket/key, for display and for the audit trail (never carries credentials). */
  uri(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  async ensureBucket(): Promise<void> {
    if (!(await this.client.bucketExists(this.bucket))) await this.client.makeBucket(this.bucket, this.config.region);
  }

  async putFile(key: string, file: string): Promise<void> {
    await this.client.fPutObject(this.bucket, key, file);
  }

  /**
   * Uploads a file, reading it once; returns its size and sha256 (for a manifest).
   *
   * minio-js's fPutObject reads a file twice and digests every byte three times (our sha256, its
   * SigV4 payload sha256 on plain http, Content-MD5) and sends the parts of a large file one
   * after another. Here a small file's PUT is signed with the very sha256 that goes into the
   * manifest (the server still checks it); a large file goes up in parallel parts as
   * UNSIGNED-PAYLOAD, hashed as it is read: its integrity is the manifest's sha256, which every
   * download and `audit verify` check end to end.
   */
  async putFileHashed(key: string, file: string, options: PutFileOptions = {}): Promise<{ size: number; sha256: string }> {
    const { size } = await stat(file);
    if (size <= PART_SIZE) {
      const body = await readFile(file);
      const sha256 = createHash('sha256').update(body).digest('hex');
      if (options.sha256 !== undefined && sha256 !== options.sha256) throw new FileChanged(file, options.sha256, sha256);
      options.signal?.throwIfAborted();
      const res = await this.client.makeRequestStreamAsync(
        {
          method: 'PUT',
          bucketName: this.bucket,
          objectName: key,
          headers: { 'Content-Length': String(body.length), [SHA256_META_HEADER]: sha256 },
        },
        body,
        // minio-js signs https requests as UNSIGNED-PAYLOAD and refuses a payload hash there.
        this.client.enableSHA256 ? sha256 : '',
        [200],
        this.config.region,
      );
      res.resume();
      await new Promise<void>((resolve, reject) => res.on('end', resolve).on('error', reject));
      options.onBytes?.(body.length);
      return { size: body.length, sha256 };
    }
    return { size, sha256: await this.putLargeFile(key, file, size, options) };
  }

  /**
   * Size and sha256 of an object without reading it (one HEAD), or undefined when it does not exist.
   * `sha256` is what putFileHashed recorded as the object's user metadata: absent for objects written
   * otherwise (putBytes, putFile, a large file uploaded without a known hash).
   */
  async head(key: string): Promise<{ size: number; sha256?: string; lastModified: Date } | undefined> {
    try {
      const s = await this.client.statObject(this.bucket, key);
      const recorded = (s.metaData as Record<string, unknown>)[SHA256_META];
      return { size: s.size, lastModified: s.lastModified, ...(typeof recorded === 'string' && /^[0-9a-f]{64}$/.test(recorded) ? { sha256: recorded } : {}) };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private async putLargeFile(key: string, file: string, size: number, options: PutFileOptions): Promise<string> {
    const partSize = Math.max(PART_SIZE, Math.ceil(size / S3_MAX_PARTS));
    const client = this.unsignedClient;
    options.signal?.throwIfAborted();
    // The hash is known up front only when the caller computed it (resume): then it goes along as
    // metadata, and the hash of what was read must match it.
    const uploadId = await client.initiateNewMultipartUpload(this.bucket, key, options.sha256 !== undefined ? { [SHA256_META_HEADER]: options.sha256 } : {});
    const hash = createHash('sha256');
    const fh = await open(file, 'r');
    const parts: { part: number; etag: string }[] = [];
    const inFlight = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;
    let digest: string;
    try {
      for (let offset = 0, part = 1; offset < size && !failure; offset += partSize, part++) {
        const length = Math.min(partSize, size - offset);
        await this.partSlots.acquire();
        let buf: Buffer;
        try {
          options.signal?.throwIfAborted();
          buf = Buffer.allocUnsafe(length);
          const { bytesRead } = await fh.read(buf, 0, length, offset);
          if (bytesRead !== length) throw new Error(`${file}: changed while uploading (short read at ${offset})`);
        } catch (err) {
          this.partSlots.release();
          throw err;
        }
        hash.update(buf);
        const partNumber = part;
        const sending: Promise<void> = client
          .uploadPart({ bucketName: this.bucket, objectName: key, uploadID: uploadId, partNumber, headers: {} }, buf)
          .then((r) => {
            parts.push({ part: partNumber, etag: r.etag });
            options.onBytes?.(length);
          })
          .catch((error: unknown) => void (failure ??= { error }))
          .finally(() => {
            this.partSlots.release();
            inFlight.delete(sending);
          });
        inFlight.add(sending);
      }
      await Promise.all(inFlight);
      if (failure) throw failure.error;
      digest = hash.digest('hex');
      if (options.sha256 !== undefined && digest !== options.sha256) throw new FileChanged(file, options.sha256, digest);
      parts.sort((a, b) => a.part - b.part);
      await client.completeMultipartUpload(this.bucket, key, uploadId, parts);
    } catch (err) {
      await Promise.allSettled(inFlight);
      await client.abortMultipartUpload(this.bucket, key, uploadId).catch(() => undefined);
      throw err;
    } finally {
      await fh.close();
    }
    return digest;
  }

  async putBytes(key: string, body: string | Buffer, contentType = 'application/octet-stream'): Promise<void> {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    await this.client.putObject(this.bucket, key, buf, buf.length, { 'Content-Type': contentType });
  }

  async putJson(key: string, value: unknown): Promise<void> {
    await this.putBytes(key, JSON.stringify(value, null, 2) + '\n', 'application/json');
  }

  /** The object's bytes, or undefined when it does not exist. */
  async getBytes(key: string): Promise<Buffer | undefined> {
    try {
      const stream = await this.client.getObject(this.bucket, key);
      const chunks: Buffer[] = [];
      for await (const chunk of stream as Readable) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async getJson<T>(key: string): Promise<T | undefined> {
    const bytes = await this.getBytes(key);
    return bytes === undefined ? undefined : (JSON.parse(bytes.toString('utf8')) as T);
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.client.statObject(this.bucket, key);
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * Downloads to `file` through a temporary name, hashing on the way; returns the sha256.
   * The file appears under its name only when complete (and, given expectSha256, verified).
   */
  async getFile(key: string, file: string, options: { expectSha256?: string } = {}): Promise<string> {
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.part-${process.pid}`;
    const hash = createHash('sha256');
    let digest: string;
    try {
      const body = await this.getStream(key);
      body.on('data', (chunk: Buffer) => hash.update(chunk));
      await pipeline(body, createWriteStream(tmp, { highWaterMark: DOWNLOAD_CHUNK }));
      digest = hash.digest('hex');
      // A file that fails its check never appears under its name.
      if (options.expectSha256 !== undefined && digest !== options.expectSha256) throw new ChecksumMismatch(key, digest, options.expectSha256);
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return digest;
  }

  /** The object's body through a locally presigned URL (no extra request), read in large chunks. */
  private async getStream(key: string): Promise<http.IncomingMessage> {
    const url = await this.client.presignedGetObject(this.bucket, key, 600);
    const get = this.config.useSSL ? https.get : http.get;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      get(url, { agent: this.agent, highWaterMark: DOWNLOAD_CHUNK } as http.RequestOptions, resolve).on('error', reject);
    });
    if (res.statusCode !== 200) {
      const body = await new Promise<string>((resolve) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c)).on('end', () => resolve(Buffer.concat(chunks).toString('utf8'))).on('error', () => resolve(''));
      });
      const code = /<Code>([^<]+)<\/Code>/.exec(body)?.[1];
      throw Object.assign(new Error(`GET ${key}: HTTP ${res.statusCode}${code ? ` ${code}` : ''}`), { code: code ?? `HTTP${res.statusCode}`, statusCode: res.statusCode });
    }
    return res;
  }

  async list(prefix: string, recursive = true): Promise<ObjectInfo[]> {
    const out: ObjectInfo[] = [];
    const stream = this.client.listObjectsV2(this.bucket, prefix, recursive);
    for await (const item of stream as AsyncIterable<{ name?: string; prefix?: string; size?: number; lastModified?: Date }>) {
      if (item.name) out.push({ key: item.name, size: item.size ?? 0, lastModified: item.lastModified });
      else if (item.prefix) out.push({ key: item.prefix, size: 0 });
    }
    return out;
  }

  async remove(keys: string[]): Promise<void> {
    if (keys.length > 0) await this.client.removeObjects(this.bucket, keys);
  }

  // --- Conditional writes (storage/stage-lease.ts) -----------------------------------------------
  // ETags are returned and taken without quotes. A conditional PUT that loses (the object exists,
  // or its ETag is no longer the given one) is S3's 412 PreconditionFailed; a PUT with If-Match on
  // a missing key is 404 NoSuchKey (MinIO) — both mean "not yours". 409 ConditionalRequestConflict
  // (AWS: a concurrent conditional write on the same key was in flight) counts as losing too.

  /** Writes `key` only if no object is there (`If-None-Match: *`): exactly one of racing writers wins. */
  async putIfAbsent(key: string, body: string | Buffer): Promise<{ etag: string } | 'exists'> {
    try {
      return await this.conditionalPut(key, body, { 'If-None-Match': '*' });
    } catch (err) {
      if (isConditionFailed(err)) return 'exists';
      throw err;
    }
  }

  /** Overwrites `key` only if its ETag is still `etag` (`If-Match`); 'changed' when it is not, or it is gone. */
  async putIfMatch(key: string, body: string | Buffer, etag: string): Promise<{ etag: string } | 'changed'> {
    try {
      return await this.conditionalPut(key, body, { 'If-Match': quoteEtag(etag) });
    } catch (err) {
      if (isConditionFailed(err) || isNotFound(err)) return 'changed';
      throw err;
    }
  }

  /** The object's bytes and ETag from one GET (so the two always belong together), or undefined. */
  async getWithEtag(key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    let res: http.IncomingMessage;
    try {
      res = await this.client.makeRequestAsync({ method: 'GET', bucketName: this.bucket, objectName: key }, '', [200], this.config.region);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    return { body: Buffer.concat(chunks), etag: unquoteEtag(String(res.headers.etag ?? '')) };
  }

  /**
   * Deletes `key` if its ETag is still `etag`. NOT atomic on MinIO: MinIO (the pinned build)
   * ignores `If-Match` on DeleteObject and deletes whatever is there, so this reads the ETag first
   * and deletes only on a match — a writer that replaces the object between that read and the
   * DELETE loses its object. The header is still sent, so a server that honours conditional
   * deletes (AWS S3) makes it atomic. 'changed' when the object is gone or differs.
   */
  async removeIfMatch(key: string, etag: string): Promise<'removed' | 'changed'> {
    const current = await this.getWithEtag(key);
    if (!current || current.etag !== unquoteEtag(etag)) return 'changed';
    try {
      const res = await this.client.makeRequestAsync(
        { method: 'DELETE', bucketName: this.bucket, objectName: key, headers: { 'If-Match': quoteEtag(etag) } },
        '',
        [200, 204],
        this.config.region,
      );
      res.resume();
      return 'removed';
    } catch (err) {
      if (isConditionFailed(err) || isNotFound(err)) return 'changed';
      throw err;
    }
  }

  /** One signed PUT with extra (conditional) headers; the new ETag. Failures throw minio-js's S3Error. */
  private async conditionalPut(key: string, body: string | Buffer, headers: Record<string, string>): Promise<{ etag: string }> {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    const res = await this.client.makeRequestStreamAsync(
      {
        method: 'PUT',
        bucketName: this.bucket,
        objectName: key,
        headers: { 'Content-Length': String(buf.length), 'Content-Type': 'application/json', ...headers },
      },
      buf,
      // minio-js signs the payload's sha256 on plain http and wants none on https.
      this.client.enableSHA256 ? createHash('sha256').update(buf).digest('hex') : '',
      [200],
      this.config.region,
    );
    res.resume();
    await new Promise<void>((resolve, reject) => res.on('end', resolve).on('error', reject));
    const etag = res.headers.etag;
    if (!etag) throw new Error(`PUT ${key}: the response carries no ETag`);
    return { etag: unquoteEtag(etag) };
  }
}

/** S3's answer to a conditional request whose condition did not hold (or raced another one). */
export function isConditionFailed(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === 'PreconditionFailed' || code === 'ConditionalRequestConflict';
}

function unquoteEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function quoteEtag(etag: string): string {
  return `"${unquoteEtag(etag)}"`;
}

export class ChecksumMismatch extends Error {
  override name = 'ChecksumMismatch';
  constructor(
    readonly key: string,
    readonly actual: string,
    readonly expected: string,
  ) {
    super(`${key}: sha256 ${actual} does not match the expected ${expected}`);
  }
}

/** A file's bytes no longer hash to what the caller computed before uploading it. */
export class FileChanged extends Error {
  override name = 'FileChanged';
  constructor(
    readonly file: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`${file}: changed while committing (sha256 ${actual}, was ${expected} when first read)`);
  }
}

export function isNotFound(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === 'NoSuchKey' || code === 'NotFound' || code === 'NoSuchBucket';
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}
