/**
 * A thin, endpoint-agnostic layer over the `minio` client (any S3 API): just the operations
 * Refinery needs, with keys always relative to one bucket — and, for the audit trail's write-once
 * copies, the same keys in a second, object-locked bucket (`putLocked`, `listLockedVersions`,
 * `getLocked`; config/audit-lock.ts, docs/security.md).
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
import { DEFAULT_AUDIT_RETENTION_DAYS, auditLockSettings, type AuditLockMode, type AuditLockSettings } from '../config/audit-lock.js';
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

/** One version of an object in the audit bucket, as listed (listLockedVersions). */
export interface LockedVersion {
  key: string;
  versionId: string;
  isLatest: boolean;
  /** What a DELETE without a version id leaves: it hides the versions below it and deletes none. */
  isDeleteMarker: boolean;
  lastModified?: Date;
}

/** One version of a write-once copy with its Object Lock state, from one GET (getLocked). */
export interface LockedObject {
  body: Buffer;
  versionId: string | null;
  lastModified?: Date;
  /** Absent: the version carries no retention. */
  retention?: { mode: string; retainUntil: Date };
  legalHold: boolean;
}

/** The audit bucket as found: what the writers need before the first copy and what `audit verify` reports. */
export type AuditBucketState =
  | { state: 'off' }
  | { state: 'missing'; bucket: string }
  | { state: 'unlocked'; bucket: string }
  | { state: 'locked'; bucket: string; defaultRetention?: { mode: string; days: number } };

/** What each write-once copy is given, and where the retention period came from. */
export interface AuditRetention {
  mode: AuditLockMode;
  days: number;
  legalHold: boolean;
  source: 'REFINERY_AUDIT_RETENTION_DAYS' | 'the bucket default' | 'the default';
}

const DAY_MS = 24 * 3600 * 1000;

export class ObjectStore {
  readonly client: Client;
  readonly bucket: string;
  /** Where the audit trail's write-once copies go, and how they are locked. */
  readonly auditLock: AuditLockSettings;
  /** The retention the writes use, resolved once per store (the first write-once copy checks the bucket). */
  private writeRetention: Promise<AuditRetention> | undefined;
  /** Sends multipart parts as UNSIGNED-PAYLOAD: see putFileHashed. */
  private readonly unsignedClient: Client;
  private readonly partSlots = new Slots(PARTS_IN_FLIGHT);
  /**
   * Part buffers, reused: a slot's buffer goes back here when its part is sent. Fresh 32 MiB
   * buffers per part would leave the garbage collector hundreds of MiB behind on a large file.
   */
  private readonly partBuffers: Buffer[] = [];
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
    this.auditLock = config.auditLock ?? auditLockSettings({}, config.bucket);
  }

  /** s3://bucket/key, for display and for the audit trail (never carries credentials). */
  uri(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  /** The audit bucket, or null when write-once copies are turned off (REFINERY_S3_AUDIT_BUCKET=off). */
  get auditBucket(): string | null {
    return this.auditLock.bucket;
  }

  /** s3://<audit bucket>/key. */
  auditUri(key: string): string {
    return `s3://${this.auditLock.bucket ?? '(off)'}/${key}`;
  }

  /**
   * Creates the bucket if missing, and the audit bucket, with object locking (it cannot be turned
   * on later). An audit bucket that exists without object locking is refused: its copies would not
   * be write-once.
   */
  async ensureBucket(): Promise<void> {
    if (!(await this.client.bucketExists(this.bucket))) await this.client.makeBucket(this.bucket, this.config.region);
    const audit = this.auditLock.bucket;
    if (!audit) return;
    if ((await this.auditBucketState()).state === 'missing') {
      try {
        await this.client.makeBucket(audit, this.config.region, { ObjectLocking: true });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== 'BucketAlreadyOwnedByYou' && code !== 'BucketAlreadyExists') {
          throw new AuditBucketUnusable(`cannot create the audit bucket "${audit}" (${code ?? (err as Error).message}): create it with object locking, or set REFINERY_S3_AUDIT_BUCKET`);
        }
      }
    }
    await this.auditRetention();
  }

  /** Whether the audit bucket exists and has object locking, and its default retention. */
  async auditBucketState(): Promise<AuditBucketState> {
    const bucket = this.auditLock.bucket;
    if (!bucket) return { state: 'off' };
    // Asked first: with a region configured, MinIO answers a missing bucket's lock config as "not found".
    if (!(await this.client.bucketExists(bucket))) return { state: 'missing', bucket };
    try {
      const info = (await (this.client.getObjectLockConfig(bucket) as unknown as Promise<{ objectLockEnabled?: string; mode?: string; unit?: string; validity?: number }>)) ?? {};
      if (info.objectLockEnabled !== 'Enabled') return { state: 'unlocked', bucket };
      const days = info.validity ? (info.unit === 'Years' ? info.validity * 365 : info.validity) : undefined;
      return { state: 'locked', bucket, ...(info.mode && days ? { defaultRetention: { mode: info.mode, days } } : {}) };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'NoSuchBucket') return { state: 'missing', bucket };
      if (code === 'ObjectLockConfigurationNotFoundError') return { state: 'unlocked', bucket };
      throw err;
    }
  }

  /**
   * The mode, retention and legal hold each write-once copy gets (and `audit verify` expects):
   * REFINERY_AUDIT_RETENTION_DAYS, else the audit bucket's default retention, else 365 days.
   * Throws AuditBucketUnusable when the bucket is missing or not object-locked.
   */
  auditRetention(): Promise<AuditRetention> {
    this.writeRetention ??= (async () => {
      const state = await this.auditBucketState();
      if (state.state === 'off') throw new AuditBucketUnusable('write-once copies are turned off (REFINERY_S3_AUDIT_BUCKET=off)');
      if (state.state === 'missing') throw new AuditBucketUnusable(`the audit bucket "${state.bucket}" does not exist: create it with object locking (MinIO: mc mb --with-lock), or set REFINERY_S3_AUDIT_BUCKET`);
      if (state.state === 'unlocked') throw new AuditBucketUnusable(`the audit bucket "${state.bucket}" has no object locking, so its copies would not be write-once: create one with object locking and set REFINERY_S3_AUDIT_BUCKET`);
      const { mode, legalHold, retentionDays } = this.auditLock;
      if (retentionDays !== undefined) return { mode, days: retentionDays, legalHold, source: 'REFINERY_AUDIT_RETENTION_DAYS' as const };
      if (state.defaultRetention) return { mode, days: state.defaultRetention.days, legalHold, source: 'the bucket default' as const };
      return { mode, days: DEFAULT_AUDIT_RETENTION_DAYS, legalHold, source: 'the default' as const };
    })();
    // A failure is not kept: the bucket may be fixed (or the store reachable again) for the next write.
    this.writeRetention.catch(() => (this.writeRetention = undefined));
    return this.writeRetention;
  }

  /**
   * Writes the write-once copy of `key` into the audit bucket: `If-None-Match: *`, with Object Lock
   * retention (mode and retain-until date) and, if configured, a legal hold. 'same' when the copy
   * is already there with these very bytes (a retried write); LockedCopyConflict when it holds
   * other bytes (the copy there stays the authority).
   */
  async putLocked(key: string, body: Buffer): Promise<'written' | 'same'> {
    const bucket = this.auditLock.bucket;
    if (!bucket) throw new AuditBucketUnusable('write-once copies are turned off (REFINERY_S3_AUDIT_BUCKET=off)');
    const retention = await this.auditRetention();
    const headers: Record<string, string> = {
      'If-None-Match': '*',
      // AWS requires an integrity header on every PUT with Object Lock headers.
      'Content-MD5': createHash('md5').update(body).digest('base64'),
      'X-Amz-Object-Lock-Mode': retention.mode,
      'X-Amz-Object-Lock-Retain-Until-Date': new Date(Date.now() + retention.days * DAY_MS).toISOString(),
      ...(retention.legalHold ? { 'X-Amz-Object-Lock-Legal-Hold': 'ON' } : {}),
    };
    try {
      await this.conditionalPut(key, body, headers, bucket);
      return 'written';
    } catch (err) {
      if (!isConditionFailed(err)) throw err;
    }
    const there = await this.getLocked(key);
    if (there && there.body.equals(body)) return 'same';
    throw new LockedCopyConflict(`s3://${bucket}/${key}`);
  }

  /** Every version (delete markers included) under `prefix` in the audit bucket, in key order. */
  async listLockedVersions(prefix: string): Promise<LockedVersion[]> {
    const bucket = this.auditLock.bucket;
    if (!bucket) return [];
    const out: LockedVersion[] = [];
    const stream = this.client.listObjects(bucket, prefix, true, { IncludeVersion: true });
    type Item = { name?: string; versionId?: string; isLatest?: boolean | string; isDeleteMarker?: boolean; lastModified?: Date };
    for await (const item of stream as AsyncIterable<Item>) {
      if (!item.name) continue;
      out.push({
        key: item.name,
        versionId: item.versionId ?? 'null',
        isLatest: item.isLatest === true || item.isLatest === 'true',
        isDeleteMarker: item.isDeleteMarker === true,
        ...(item.lastModified && !Number.isNaN(item.lastModified.getTime()) ? { lastModified: item.lastModified } : {}),
      });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** One version (default: the latest) of a write-once copy, with its retention and legal hold; undefined when absent. */
  async getLocked(key: string, versionId?: string): Promise<LockedObject | undefined> {
    const bucket = this.auditLock.bucket;
    if (!bucket) return undefined;
    let res: http.IncomingMessage;
    try {
      res = await this.client.makeRequestAsync(
        { method: 'GET', bucketName: bucket, objectName: key, ...(versionId ? { query: `versionId=${encodeURIComponent(versionId)}` } : {}) },
        '',
        [200],
        this.config.region,
      );
    } catch (err) {
      // A delete marker answers 404 (latest) or 405 (by version id).
      if (isNotFound(err) || (err as { code?: string }).code === 'MethodNotAllowed') return undefined;
      throw err;
    }
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    const h = res.headers;
    const mode = h['x-amz-object-lock-mode'];
    const until = h['x-amz-object-lock-retain-until-date'];
    const modified = h['last-modified'] ? new Date(String(h['last-modified'])) : undefined;
    return {
      body: Buffer.concat(chunks),
      versionId: typeof h['x-amz-version-id'] === 'string' ? h['x-amz-version-id'] : null,
      ...(modified && !Number.isNaN(modified.getTime()) ? { lastModified: modified } : {}),
      ...(typeof mode === 'string' && typeof until === 'string' ? { retention: { mode, retainUntil: new Date(until) } } : {}),
      legalHold: String(h['x-amz-object-lock-legal-hold'] ?? '').toUpperCase() === 'ON',
    };
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
          buf = partSize === PART_SIZE ? (this.partBuffers.pop() ?? Buffer.allocUnsafe(PART_SIZE)) : Buffer.allocUnsafe(partSize);
          const { bytesRead } = await fh.read(buf, 0, length, offset);
          if (bytesRead !== length) throw new Error(`${file}: changed while uploading (short read at ${offset})`);
        } catch (err) {
          this.partSlots.release();
          throw err;
        }
        const whole = buf;
        buf = buf.subarray(0, length);
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
            if (whole.length === PART_SIZE) this.partBuffers.push(whole);
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
    await this.putBytes(key, jsonBytes(value), 'application/json');
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

  /**
   * The object's bytes as they arrive, in chunks of up to 1 MiB (the same presigned GET through the
   * keep-alive agent as getFile), or undefined when it does not exist: memory stays a few chunks
   * whatever the object's size. Iterate it once; leaving the loop early closes the download.
   */
  async readStream(key: string): Promise<AsyncIterable<Buffer> | undefined> {
    let body: http.IncomingMessage;
    try {
      body = await this.getStream(key);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    return body as AsyncIterable<Buffer>;
  }

  /** Size and sha256 of the object's bytes, hashed as they stream (bounded memory); undefined when it does not exist. */
  async hashObject(key: string): Promise<{ size: number; sha256: string } | undefined> {
    const chunks = await this.readStream(key);
    if (!chunks) return undefined;
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of chunks) {
      hash.update(chunk);
      size += chunk.length;
    }
    return { size, sha256: hash.digest('hex') };
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
  private async conditionalPut(key: string, body: string | Buffer, headers: Record<string, string>, bucket = this.bucket): Promise<{ etag: string }> {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    const res = await this.client.makeRequestStreamAsync(
      {
        method: 'PUT',
        bucketName: bucket,
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

/** How putJson serializes: the bytes of a record in the main bucket and of its write-once copy. */
export function jsonBytes(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, null, 2) + '\n');
}

/** The audit bucket is missing, not object-locked, or turned off: no write-once copy can be written. */
export class AuditBucketUnusable extends Error {
  override name = 'AuditBucketUnusable';
}

/** The write-once copy of a record is already there, with other bytes than the ones being written. */
export class LockedCopyConflict extends Error {
  override name = 'LockedCopyConflict';
  constructor(readonly uri: string) {
    super(`${uri}: a different write-once copy is already there (it stays; the record is not written)`);
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
