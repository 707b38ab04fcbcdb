/**
 * What `base_model` may say instead of a path: the name of a model stored with `refinery model push`
 * (storage/models.ts). It has no "/", so a name is never mistaken for a path (write `./dir` for a
 * directory next to the spec).
 */
export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

export function isModelName(value: string): boolean {
  return MODEL_NAME.test(value) && !value.includes('..');
}

/** A model registry alias (storage/registry.ts): production, candidate, previous, … */
export const ALIAS_NAME = /^[a-z][a-z0-9-]{0,39}$/;
