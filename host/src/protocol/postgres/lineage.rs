//! Where a view's columns come from: PostgreSQL's own answer, read from the
//! view's stored query tree (`pg_rewrite.ev_action`, in its node-string form).
//!
//! When PostgreSQL parses a query it marks each output column that is a
//! plain column reference with that column's table and attnum (`resorigtbl`,
//! `resorigcol`): the same marks a RowDescription carries. For a query on a
//! view those marks name the view, so a column rule on `customers.ssn`
//! would not reach `SELECT ssn FROM customers_view`; the view's stored
//! query has the marks that lead on to the table (or to another view, read
//! in turn; see [`super::catalog::Catalog::source`]).

/// `(view column attnum, source table OID, source attnum)` of each output
/// column of the query tree `tree` that is a plain column reference; `None`
/// when the text is not a query tree this reader understands.
pub fn origins(tree: &str) -> Option<Vec<(i16, u32, i16)>> {
    let tokens = tokens(tree);
    // The outermost QUERY node's fields are one level inside its brace.
    let at = tokens.iter().position(|(_, t)| *t == "QUERY")?;
    let depth = tokens[at].0;
    let list = tokens[at..].iter().position(|(d, t)| *d == depth && *t == ":targetList")? + at + 1;
    match tokens.get(list) {
        Some((_, "<>")) => return Some(Vec::new()),
        Some((_, "(")) => {}
        _ => return None,
    }
    let entry = depth + 2;
    let mut out = Vec::new();
    let (mut resno, mut table, mut column) = (None, None, None);
    let mut i = list + 1;
    while let Some(&(d, t)) = tokens.get(i) {
        if d <= depth {
            break;
        }
        let next = tokens.get(i + 1).map(|(_, t)| *t);
        if d == entry {
            match t {
                ":resno" => resno = next.and_then(|v| v.parse::<i16>().ok()),
                ":resorigtbl" => table = next.and_then(|v| v.parse::<u32>().ok()),
                ":resorigcol" => column = next.and_then(|v| v.parse::<i16>().ok()),
                ":resjunk" => {
                    let (n, tbl, col) = (resno.take()?, table.take()?, column.take()?);
                    if next == Some("false") && tbl != 0 && col > 0 {
                        out.push((n, tbl, col));
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    Some(out)
}

/// The node string's tokens, each with its nesting depth: `(` and `{` are
/// tokens of the depth outside them, what they hold is one deeper. A
/// backslash escapes the character after it (names may hold any).
fn tokens(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                start.get_or_insert(i);
            }
            '(' | '{' | ')' | '}' => {
                if let Some(b) = start.take() {
                    out.push((depth, &s[b..i]));
                }
                if matches!(c, ')' | '}') {
                    depth = depth.saturating_sub(1);
                }
                out.push((depth, &s[i..i + 1]));
                if matches!(c, '(' | '{') {
                    depth += 1;
                }
            }
            c if c.is_whitespace() => {
                if let Some(b) = start.take() {
                    out.push((depth, &s[b..i]));
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(b) = start {
        out.push((depth, &s[b..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CREATE VIEW v2 AS SELECT v.id AS "a b(", v.ssn AS x, (SELECT 1) AS one
    /// FROM v1 v WHERE v.id IN (SELECT id FROM orders) ORDER BY 1`, as
    /// PostgreSQL 15 stores it (location fields and some `rtable` fields cut):
    /// subqueries before and inside the target list have target entries of
    /// their own, which are not the view's columns.
    const VIEW: &str = r#"({QUERY :commandType 1 :querySource 0 :canSetTag true :utilityStmt <> :resultRelation 0 :hasSubLinks true :cteList <> :rtable ({RANGETBLENTRY :alias {ALIAS :aliasname old :colnames <>} :eref {ALIAS :aliasname old :colnames ("a\ b\(" "x" "one")} :rtekind 0 :relid 16426 :relkind v} {RANGETBLENTRY :alias {ALIAS :aliasname v :colnames <>} :eref {ALIAS :aliasname v :colnames ("id" "ssn" "em")} :rtekind 0 :relid 16412 :relkind v :selectedCols (b 8 9)}) :jointree {FROMEXPR :fromlist ({RANGETBLREF :rtindex 3}) :quals {SUBLINK :subLinkType 2 :subLinkId 0 :testexpr {OPEXPR :opno 96 :args ({VAR :varno 3 :varattno 1 :vartype 23} {PARAM :paramkind 2 :paramid 1 :paramtype 23})} :operName ("=") :subselect {QUERY :commandType 1 :querySource 0 :rtable ({RANGETBLENTRY :alias <> :eref {ALIAS :aliasname orders :colnames ("id" "customer_id")} :rtekind 0 :relid 16397 :relkind r}) :jointree {FROMEXPR :fromlist ({RANGETBLREF :rtindex 1}) :quals <>} :targetList ({TARGETENTRY :expr {VAR :varno 1 :varattno 1 :vartype 23} :resno 1 :resname id :ressortgroupref 0 :resorigtbl 16397 :resorigcol 1 :resjunk false}) :override 0 :sortClause <> :stmt_len 0} :location 101}} :targetList ({TARGETENTRY :expr {VAR :varno 3 :varattno 1 :vartype 23} :resno 1 :resname a\ b\( :ressortgroupref 1 :resorigtbl 16412 :resorigcol 1 :resjunk false} {TARGETENTRY :expr {VAR :varno 3 :varattno 2 :vartype 25} :resno 2 :resname x :ressortgroupref 0 :resorigtbl 16412 :resorigcol 2 :resjunk false} {TARGETENTRY :expr {SUBLINK :subLinkType 4 :subselect {QUERY :commandType 1 :rtable <> :jointree {FROMEXPR :fromlist <> :quals <>} :targetList ({TARGETENTRY :expr {CONST :consttype 23 :constlen 4 :constbyval true :constisnull false :location 66 :constvalue 4 [ 1 0 0 0 0 0 0 0 ]} :resno 1 :resname ?column? :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false}) :override 0} :location 58} :resno 3 :resname one :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false}) :override 0 :sortClause ({SORTGROUPCLAUSE :tleSortGroupRef 1 :eqop 96}) :stmt_len 138})"#;

    #[test]
    fn a_views_own_target_list_gives_its_columns_sources() {
        assert_eq!(origins(VIEW).unwrap(), [(1, 16412, 1), (2, 16412, 2)]);
    }

    #[test]
    fn junk_and_computed_columns_have_no_source_and_unknown_text_none() {
        let junk = "({QUERY :targetList ({TARGETENTRY :expr {VAR} :resno 1 :resname a :resorigtbl 5 :resorigcol 2 :resjunk true} {TARGETENTRY :expr {FUNCEXPR :args ({VAR :varattno 3})} :resno 2 :resname b :resorigtbl 0 :resorigcol 0 :resjunk false}) :override 0})";
        assert_eq!(origins(junk).unwrap(), []);
        assert_eq!(origins("({QUERY :targetList <> :override 0})").unwrap(), []);
        assert!(origins("").is_none() && origins("({QUERY :rtable <>})").is_none());
        // A target entry cut short is not read as another's.
        assert!(origins("({QUERY :targetList ({TARGETENTRY :resno 1 :resjunk false})})").is_none());
    }
}
