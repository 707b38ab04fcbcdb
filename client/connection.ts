/** The Temporal client for CLI commands, with one clear line when the server is not there. */
import { Client, Connection } from '@temporalio/client';
import { dataConverterFromEnv } from '../codec/data-converter.js';
import { connectionOptions, describeSecurity, temporalSettings } from '../config/temporal.js';
import { CliError } from './errors.js';
import { EXIT } from './exit-codes.js';

export async function connectClient(): Promise<{ client: Client; close: () => Promise<void> }> {
  const settings = temporalSettings();
  const { address, namespace } = settings;
  // Same payload encryption as the workers (REFINERY_PAYLOAD_KEY); a bad key fails here, before connecting.
  const dataConverter = dataConverterFromEnv();
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...connectionOptions(settings), connectTimeout: '5s' });
  } catch (err) {
    const why = settings.tls || settings.apiKey ? ` over ${describeSecurity(settings)} (${(err as Error).message.split('\n')[0]})` : '';
    throw new CliError(`cannot reach Temporal at ${address}${why}`, 'start the local stack with "npx refinery stack start", or set TEMPORAL_ADDRESS (and TEMPORAL_TLS_* / TEMPORAL_API_KEY for a secured server)', EXIT.unreachable);
  }
  return { client: new Client({ connection, namespace, dataConverter }), close: () => connection.close() };
}
