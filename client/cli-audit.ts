/** `audit`, `audit verify`, `report`, `logs`: commands that read a run's records in object storage. */
import type { Command } from 'commander';

export function registerAuditCommands(_program: Command): void {
  // registered by client/commands/audit.ts, report.ts, logs.ts (work in progress)
}
