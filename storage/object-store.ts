/**
 * A thin, endpoint-agnostic layer over the `minio` client (any S3 API): just the operations
 * Refinery needs, with keys always relative to one bucket.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import { Client } from 'minio';
import { storageConfigFromEnv, type StorageConfig } from './config.js';

export interface ObjectInfo {
  key: string;
  size: number;
  /** Objects only (not common prefixes). */
  lastModified?: Date;
}

export class ObjectStore {
  readonly client: Client;
  readonly bucket: string;

  constructor(readonly config: StorageConfig = storageConfigFromEnv()) {
    this.client = new Client({
      endPoint: config.endPoint,
      port: config.port,
      useSSL: config.useSSL,
      accessKey: config.accessKey,
      secretKey: config.secretKey,
      region: config.region,
    });
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
   * The file appears under its name only when complete.
   */
  async getFile(key: string, file: string): Promise<string> {
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.part-${process.pid}`;
    const hash = createHash('sha256');
    try {
      const stream = (await this.client.getObject(this.bucket, key)) as Readable;
      stream.on('data', (chunk: Buffer) => hash.update(chunk));
      await pipeline(stream, createWriteStream(tmp));
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return hash.digest('hex');
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
