/**
 * The search attributes `refinery stack start` registers on the namespace, with their types.
 *
 * The names are the one list in workflows/search-attributes.ts (workflow code sets them and runs
 * in Temporal's sandbox, so that list stays a dependency-free file there); this module only adds
 * the type each is registered with. It is the one import of config/ from outside config/, and
 * that file imports nothing.
 */
import { SEARCH_ATTRIBUTES } from '../workflows/search-attributes.js';

export type SearchAttributeType = 'Text' | 'Keyword' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList';

/** Search attributes Refinery's workflows set; registered on the namespace at every start. */
export const REFINERY_SEARCH_ATTRIBUTES = {
  [SEARCH_ATTRIBUTES.pipeline]: 'Keyword',
  [SEARCH_ATTRIBUTES.state]: 'Keyword',
} as const satisfies Record<(typeof SEARCH_ATTRIBUTES)[keyof typeof SEARCH_ATTRIBUTES], SearchAttributeType>;
