//! Does a DELETE's or UPDATE's WHERE select every row anyway?
//!
//! The condition is read as a boolean formula over its atoms: comparisons,
//! function calls, subqueries — anything that is not AND, OR, NOT, `IS [NOT]
//! TRUE/FALSE/UNKNOWN`, `IS [NOT] NULL`, a CASE or a coalesce (read as the
//! conditions they spell out). Equal atoms (same expression, any constants)
//! are one variable; an atom that mentions no column is the same for every
//! row, and each such occurrence is a variable of its own (its value is
//! unknown here, so an attacker may pick it) unless it is written `true`,
//! `false` or `NULL`. A comparison is NULL exactly when one of its sides is
//! (`(id = 1) IS NOT NULL` is `id IS NOT NULL`); a
//! comparison of an expression with itself (`coalesce(id, 0) =
//! coalesce(id, 0)`, also `id + 0 = id` and `id::bigint = id`: arithmetic
//! with constants, casts and constant `coalesce` defaults are looked
//! through) is decided, and so is an expression among its own candidates
//! (`id IN (1, id)`, `id = ANY (ARRAY[id])`, `id BETWEEN id AND id`). The
//! WHERE selects every row when some choice of the row-independent atoms
//! makes the formula true for every choice of the others: `p OR NOT p`,
//! `(id = 1) IS NOT TRUE OR id = 1`, `x IS NULL OR x IS NOT NULL`, `id = 1
//! OR now() IS NOT NULL`, `(id = id) = true`.
//!
//! `id IS NOT NULL` depends on the schema: it keeps every row when `id` is
//! declared NOT NULL. The analysis reports which sets of null-tested columns
//! would make the WHERE trivial; the protocol layer decides with the upstream's
//! catalog.
//!
//! Constants' values never matter here (so texts that differ only in
//! constants are analysed alike, which the analysis caches rely on). Truth is
//! undecidable in general: `WHERE id > 0` and `WHERE id IN (SELECT id FROM
//! other)` pass; `id IN (SELECT id FROM t)` over the table `t` the statement
//! writes, with no filter in the subquery, is `id IS NOT NULL`.
//!
//! One exception: a pattern that matches every string (`name LIKE '%'`, `name
//! ~ ''`) is read as `name IS NOT NULL`, and an analysis that read a pattern
//! says so ([`WhereTruth::pattern_read`]): no template may serve another text.

use pg_query::protobuf::{AExprKind, BoolExprType, BoolTestType, NullTestType, RangeVar};
use pg_query::{Node, NodeEnum};

/// Work bound of one decision (truth-table assignments x formula size, over
/// all its tables): about a millisecond. Beyond it the WHERE counts as
/// trivial (refused).
const MAX_EVALS: u64 = 1 << 20;
/// Operators that are the negation of another (two-valued): `a <> b` is NOT
/// `a = b`, `a >= b` is NOT `a < b`, `a <= b` is NOT `a > b`, and the negated
/// pattern matches.
const NEGATIONS: [(&str, &str); 8] =
    [("<>", "="), ("!=", "="), (">=", "<"), ("<=", ">"), ("!~~", "~~"), ("!~~*", "~~*"), ("!~", "~"), ("!~*", "~*")];

/// What a WHERE clause does to the rows of its table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WhereTruth {
    /// It selects every row (or none) whatever the data: no real filter.
    pub trivial: bool,
    /// Not trivial as written, but it null-tests plain columns: whether it
    /// is once some of them are declared NOT NULL, the schema decides.
    pub null_tests: Option<NullTests>,
    /// The answer read a pattern's value (`name LIKE '%'` matches every
    /// non-NULL name): texts that differ only in constants may differ here.
    pub pattern_read: bool,
}

/// A WHERE that null-tests plain columns, kept to be decided against the
/// schema (see [`NullTests::trivial_given`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NullTests {
    formula: Formula,
    atoms: Vec<Atom>,
}

impl NullTests {
    /// The null-tested column names (as written, last part).
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.atoms.iter().filter_map(|a| a.null_column.as_deref())
    }

    /// Does the WHERE select every row once every column `not_null` names is
    /// NOT NULL (its IS NULL tests are false)?
    pub fn trivial_given(&self, not_null: impl Fn(&str) -> bool) -> bool {
        let assumed: Vec<bool> = self.atoms.iter().map(|a| a.null_column.as_deref().is_some_and(&not_null)).collect();
        let mut budget = MAX_EVALS;
        assumed.iter().any(|&a| a) && tautology(&self.formula, &self.atoms, &assumed, &mut budget)
    }
}

/// Analyse the WHERE clause of a DELETE or UPDATE of `target` (`None`: no
/// WHERE at all, which is trivial).
pub fn where_truth(clause: Option<&Node>, target: Option<&RangeVar>) -> WhereTruth {
    let Some(node) = clause.and_then(|n| n.node.as_ref()) else {
        return WhereTruth { trivial: true, null_tests: None, pattern_read: false };
    };
    let mut atoms = Atoms { target, ..Atoms::default() };
    let formula = atoms.formula(node);
    let none = vec![false; atoms.list.len()];
    let mut budget = MAX_EVALS;
    let pattern_read = atoms.pattern_read;
    if atoms.too_large || tautology(&formula, &atoms.list, &none, &mut budget) {
        return WhereTruth { trivial: true, null_tests: None, pattern_read };
    }
    let null_tests =
        atoms.list.iter().any(|a| a.null_column.is_some()).then_some(NullTests { formula, atoms: atoms.list });
    WhereTruth { trivial: false, null_tests, pattern_read }
}

/// A boolean formula over atom indices.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Formula {
    Atom(usize),
    Const(bool),
    Not(Box<Formula>),
    And(Vec<Formula>),
    Or(Vec<Formula>),
}

/// A variable of the formula; equal expressions (see [`key`]) share one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Atom {
    /// Mentions no column: the same for every row.
    row_independent: bool,
    /// `column IS NULL` of a plain column reference: that column's name.
    null_column: Option<String>,
}

#[derive(Default)]
struct Atoms<'t> {
    /// The table the WHERE filters.
    target: Option<&'t RangeVar>,
    list: Vec<Atom>,
    index: std::collections::HashMap<String, usize>,
    /// A constant pattern was read (see [`WhereTruth::pattern_read`]).
    pattern_read: bool,
    /// A truth-value comparison would have copied more than
    /// [`MAX_COPIED`] formula nodes: the WHERE counts as trivial (refused).
    too_large: bool,
}

/// Formula nodes one truth-value comparison may copy (`(p) = (q)` holds `p`
/// and `q` twice, so nesting doubles the formula at every level).
const MAX_COPIED: usize = 4096;

impl Atoms<'_> {
    fn formula(&mut self, node: &NodeEnum) -> Formula {
        if !super::mentions_a_column(node) {
            return constant_truth(node).unwrap_or_else(|| self.independent());
        }
        match node {
            NodeEnum::BoolExpr(b) => {
                let args = b.args.iter().filter_map(|a| a.node.as_ref());
                match b.boolop() {
                    BoolExprType::AndExpr => Formula::And(args.map(|a| self.formula(a)).collect()),
                    BoolExprType::OrExpr => Formula::Or(args.map(|a| self.formula(a)).collect()),
                    BoolExprType::NotExpr => {
                        Formula::Not(Box::new(Formula::And(args.map(|a| self.formula(a)).collect())))
                    }
                    _ => self.atom(node),
                }
            }
            // Two-valued reading: a row whose condition is NULL is neither
            // kept by `p` nor by `NOT p`; counting it as kept only ever makes
            // the WHERE look more trivial (a refusal), never less.
            NodeEnum::BooleanTest(t) => {
                let Some(arg) = t.arg.as_deref().and_then(|a| a.node.as_ref()) else {
                    return self.atom(node);
                };
                match t.booltesttype() {
                    BoolTestType::IsTrue | BoolTestType::IsNotFalse => self.formula(arg),
                    BoolTestType::IsNotTrue | BoolTestType::IsFalse => Formula::Not(Box::new(self.formula(arg))),
                    BoolTestType::IsNotUnknown => Formula::Not(Box::new(self.nullness(arg))),
                    BoolTestType::IsUnknown => self.nullness(arg),
                    BoolTestType::Undefined => self.atom(node),
                }
            }
            NodeEnum::NullTest(t) => match t.arg.as_deref().and_then(|a| a.node.as_ref()) {
                Some(arg) => self.null_test(arg, t.nulltesttype() == NullTestType::IsNotNull),
                None => self.atom(node),
            },
            NodeEnum::AExpr(e) => self.comparison(node, e),
            // A condition cast to boolean is the same condition.
            NodeEnum::TypeCast(_) if !std::ptr::eq(uncast(node), node) => self.formula(uncast(node)),
            NodeEnum::SubLink(l) => match self.own_column_subquery(l) {
                // `id IN (SELECT id FROM t)` on t: every row whose id is not NULL.
                Some(column) => Formula::Not(Box::new(self.nullness(column))),
                None => self.atom(node),
            },
            NodeEnum::CaseExpr(c) => self.case(c),
            NodeEnum::CoalesceExpr(c) => {
                let args: Vec<&NodeEnum> = c.args.iter().filter_map(|a| a.node.as_ref()).collect();
                self.coalesce(&args)
            }
            _ => self.atom(node),
        }
    }

    /// Would a formula that copies `copied` nodes pass [`MAX_COPIED`]? Then
    /// the whole WHERE counts as trivial (refused) from here on.
    fn over_copy_bound(&mut self, copied: usize) -> bool {
        self.too_large |= copied > MAX_COPIED;
        self.too_large
    }

    /// A row-independent atom of its own: every constant, parameter or
    /// row-independent call is the attacker's separate pick (`(id = 1) =
    /// 't' OR (id = 1) = 'f'`), even where two look alike.
    fn independent(&mut self) -> Formula {
        self.list.push(Atom { row_independent: true, null_column: None });
        Formula::Atom(self.list.len() - 1)
    }

    /// `CASE WHEN c1 THEN r1 … ELSE d END` as a condition: `(c1 AND r1) OR
    /// (NOT c1 AND c2 AND r2) OR … OR (NOT c1 AND … AND d)`, no ELSE being
    /// NULL (the row is not kept); `CASE x WHEN v …` compares `x = v`.
    fn case(&mut self, c: &pg_query::protobuf::CaseExpr) -> Formula {
        let mut branches = Vec::new();
        let mut earlier: Vec<Formula> = Vec::new();
        // Nodes of `earlier`, and of every branch so far.
        let (mut earlier_size, mut copied) = (0usize, 0usize);
        for w in c.args.iter().filter_map(|a| match a.node.as_ref() {
            Some(NodeEnum::CaseWhen(w)) => Some(w),
            _ => None,
        }) {
            let condition = match (c.arg.as_deref(), w.expr.as_deref()) {
                (Some(arg), Some(value)) => self.formula(&equals(arg, value)),
                (None, Some(expr)) => self.operand(Some(expr)),
                (_, None) => self.independent(),
            };
            let result = self.operand(w.result.as_deref());
            copied += earlier_size + size(&condition) + size(&result);
            if self.over_copy_bound(copied) {
                return Formula::Const(true);
            }
            let mut all = earlier.clone();
            all.push(condition.clone());
            all.push(result);
            branches.push(Formula::And(all));
            earlier_size += 1 + size(&condition);
            earlier.push(Formula::Not(Box::new(condition)));
        }
        let default = match c.defresult.as_deref() {
            Some(d) => self.operand(Some(d)),
            None => Formula::Const(false),
        };
        earlier.push(default);
        branches.push(Formula::And(earlier));
        Formula::Or(branches)
    }

    /// `coalesce(a, rest…)` as a condition: `a` where it is not NULL, else `rest`.
    fn coalesce(&mut self, args: &[&NodeEnum]) -> Formula {
        let Some((first, rest)) = args.split_first() else { return Formula::Const(false) };
        if rest.is_empty() {
            return self.formula(first);
        }
        let (value, null, otherwise) = (self.formula(first), self.nullness(first), self.coalesce(rest));
        if self.over_copy_bound(size(&value) + size(&null) + size(&otherwise)) {
            return Formula::Const(true);
        }
        Formula::Or(vec![
            Formula::And(vec![Formula::Not(Box::new(null.clone())), value]),
            Formula::And(vec![null, otherwise]),
        ])
    }

    /// `c IN (SELECT c FROM t)` or `c = ANY (SELECT …)` where `t` is the
    /// table the WHERE filters, and the subquery keeps every row of it (no
    /// WHERE, or a trivial one; no LIMIT, grouping or set operation): the
    /// column `c`.
    fn own_column_subquery<'n>(&self, l: &'n pg_query::protobuf::SubLink) -> Option<&'n NodeEnum> {
        use pg_query::protobuf::{SetOperation, SubLinkType};
        let target = self.target?;
        let equality = match l.oper_name.last().and_then(|n| n.node.as_ref()) {
            None => true,
            Some(NodeEnum::String(s)) => s.sval == "=",
            Some(_) => false,
        };
        if l.sub_link_type() != SubLinkType::AnySublink || !equality {
            return None;
        }
        let tested = uncast(l.testexpr.as_deref()?.node.as_ref()?);
        let NodeEnum::ColumnRef(outer) = tested else { return None };
        let names = column_names(outer)?;
        let column = *names.last()?;
        // Unqualified, or qualified by the target's name or alias.
        let target_names = [Some(target.relname.as_str()), target.alias.as_ref().map(|a| a.aliasname.as_str())];
        if names.len() > 2 || (names.len() == 2 && !target_names.contains(&Some(names[0]))) {
            return None;
        }
        let Some(NodeEnum::SelectStmt(q)) = l.subselect.as_deref()?.node.as_ref() else { return None };
        let whole = q.op() == SetOperation::SetopNone
            && q.group_clause.is_empty()
            && q.having_clause.is_none()
            && q.limit_count.is_none()
            && q.limit_offset.is_none()
            && q.with_clause.is_none()
            && q.target_list.len() == 1
            && q.from_clause.len() == 1;
        if !whole {
            return None;
        }
        let Some(NodeEnum::RangeVar(from)) = q.from_clause[0].node.as_ref() else { return None };
        let same_table = from.relname == target.relname
            && (from.schemaname.is_empty() || target.schemaname.is_empty() || from.schemaname == target.schemaname);
        let Some(NodeEnum::ResTarget(out)) = q.target_list[0].node.as_ref() else { return None };
        let selected = match out.val.as_deref().and_then(|v| v.node.as_ref()).map(uncast) {
            Some(NodeEnum::ColumnRef(c)) => column_names(c).and_then(|n| n.last().copied()),
            _ => None,
        };
        let every_row = q.where_clause.is_none() || where_truth(q.where_clause.as_deref(), Some(from)).trivial;
        (same_table && selected == Some(column) && every_row).then_some(tested)
    }

    /// The formula of an optional operand (missing: NULL, not kept).
    fn operand(&mut self, n: Option<&Node>) -> Formula {
        match n.and_then(|n| n.node.as_ref()) {
            Some(n) => self.formula(n),
            None => Formula::Const(false),
        }
    }

    /// When `e` is NULL. Exact for columns (an atom the schema may decide)
    /// and for strict operators (NULL when an operand is); constants are
    /// NULL only when written so, tests never are. For AND/OR it may say
    /// NULL where the value is not (`NULL AND false`): that only ever makes a
    /// WHERE look less trivial there, as an opaque atom did before.
    fn nullness(&mut self, e: &NodeEnum) -> Formula {
        let e = uncast(e);
        let args: Vec<&Node> = match e {
            NodeEnum::AConst(c) => return Formula::Const(c.isnull),
            NodeEnum::NullTest(_) | NodeEnum::BooleanTest(_) => return Formula::Const(false),
            NodeEnum::AExpr(a) => match a.kind() {
                AExprKind::AexprDistinct | AExprKind::AexprNotDistinct => return Formula::Const(false),
                AExprKind::AexprOp
                | AExprKind::AexprLike
                | AExprKind::AexprIlike
                | AExprKind::AexprIn
                | AExprKind::AexprBetween
                | AExprKind::AexprNotBetween
                | AExprKind::AexprBetweenSym
                | AExprKind::AexprNotBetweenSym => operands(a),
                _ => Vec::new(),
            },
            NodeEnum::BoolExpr(b) => b.args.iter().collect(),
            _ => Vec::new(),
        };
        if !args.is_empty() {
            return Formula::Or(args.iter().filter_map(|a| a.node.as_ref()).map(|a| self.nullness(a)).collect());
        }
        if !super::mentions_a_column(e) {
            return self.independent();
        }
        let column = match e {
            NodeEnum::ColumnRef(c) => column_names(c).and_then(|n| n.last().map(|s| s.to_string())),
            _ => None,
        };
        self.keyed(format!("null:{}", key(e)), column)
    }

    /// `arg IS NULL` (negated for IS NOT NULL), one atom per argument.
    fn null_test(&mut self, arg: &NodeEnum, negated: bool) -> Formula {
        // A cast is NULL exactly when its argument is.
        let arg = uncast(arg);
        // `ROW(a, b) IS NULL`: every field is NULL; `IS NOT NULL`: none is.
        if let NodeEnum::RowExpr(row) = arg {
            let fields: Vec<&NodeEnum> = row.args.iter().filter_map(|a| a.node.as_ref()).collect();
            if !fields.is_empty() {
                return Formula::And(fields.into_iter().map(|f| self.null_test(f, negated)).collect());
            }
        }
        let is_null = self.nullness(arg);
        if negated {
            Formula::Not(Box::new(is_null))
        } else {
            is_null
        }
    }

    fn comparison(&mut self, node: &NodeEnum, e: &pg_query::protobuf::AExpr) -> Formula {
        let l = e.lexpr.as_deref().and_then(|l| l.node.as_ref());
        let r = e.rexpr.as_deref().and_then(|r| r.node.as_ref());
        let (Some(l), Some(r)) = (l, r) else { return self.atom(node) };
        let null = |n: &NodeEnum| matches!(n, NodeEnum::AConst(c) if c.isnull);
        let kind = e.kind();
        // x IS [NOT] DISTINCT FROM NULL is x IS [NOT] NULL.
        if matches!(kind, AExprKind::AexprDistinct | AExprKind::AexprNotDistinct) && (null(l) || null(r)) {
            let arg = if null(l) { r } else { l };
            return self.null_test(arg, kind == AExprKind::AexprDistinct);
        }
        let op = e.name.last().and_then(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        });
        // A truth value compared with another (`(id = id) = true`): equal
        // when both hold or neither does; the constant is the attacker's pick.
        let equality = match (kind, op) {
            (AExprKind::AexprOp, Some("=")) | (AExprKind::AexprNotDistinct, _) => Some(true),
            (AExprKind::AexprOp, Some("<>" | "!=")) | (AExprKind::AexprDistinct, _) => Some(false),
            _ => None,
        };
        let side = |n: &NodeEnum| truth_valued(n) || !super::mentions_a_column(n);
        if let Some(equal) = equality.filter(|_| side(l) && side(r) && (truth_valued(l) || truth_valued(r))) {
            let (fl, fr) = (self.formula(l), self.formula(r));
            if self.over_copy_bound(size(&fl) + size(&fr)) {
                return Formula::Const(true);
            }
            let not = |f: Formula| Formula::Not(Box::new(f));
            let same =
                Formula::Or(vec![Formula::And(vec![fl.clone(), fr.clone()]), Formula::And(vec![not(fl), not(fr)])]);
            return if equal { same } else { not(same) };
        }
        let (kl, kr) = (key(l), key(r));
        // The key of what a side compares like, computed again only when it
        // differs from the side.
        let like = |n: &NodeEnum, k: &String| {
            let s = same_rows(n);
            if std::ptr::eq(s, n) {
                k.clone()
            } else {
                key(s)
            }
        };
        let (sl, sr) = (like(l, &kl), like(r, &kr));
        if let Some(decided) = self_membership(kind, op, &sl, r) {
            return Formula::Const(decided);
        }
        if sl == sr {
            // An expression compared with itself.
            return match (kind, op) {
                (AExprKind::AexprDistinct, _) | (AExprKind::AexprOp, Some("<>" | "!=" | "<" | ">")) => {
                    Formula::Const(false)
                }
                // `=`, `>=`, `<=`, NOT DISTINCT, and any other operator (a
                // comparison of a thing with itself is no filter).
                _ => Formula::Const(true),
            };
        }
        // One atom for a comparison and its negation (`<>` is NOT `=`, `>=` is
        // NOT `<`, NOT LIKE is NOT LIKE's negation, ...), sides ordered, so
        // `id = 5 OR id <> 5` and `5 = id OR NOT id = 5` are `p OR NOT p`.
        let (kind, op, negated) = match (kind, op) {
            // The operator name of these spells the kind out ("NOT BETWEEN").
            (AExprKind::AexprBetween | AExprKind::AexprBetweenSym | AExprKind::AexprDistinct, _) => (kind, "", false),
            (AExprKind::AexprNotBetween, _) => (AExprKind::AexprBetween, "", true),
            (AExprKind::AexprNotBetweenSym, _) => (AExprKind::AexprBetweenSym, "", true),
            (AExprKind::AexprNotDistinct, _) => (AExprKind::AexprDistinct, "", true),
            (AExprKind::AexprOp | AExprKind::AexprIn | AExprKind::AexprLike | AExprKind::AexprIlike, Some(o)) => {
                match NEGATIONS.iter().find(|(n, _)| *n == o) {
                    Some((_, base)) => (kind, *base, true),
                    None => (kind, o, false),
                }
            }
            (k, o) => (k, o.unwrap_or(""), false),
        };
        // `x LIKE '%'`, `x ~ ''`, `x SIMILAR TO '%'`: true for every non-NULL x.
        if let Some(pattern) = constant_pattern(kind, op, r) {
            self.pattern_read = true;
            if matches_everything(kind, op, pattern) {
                let not_null = self.null_test(l, true);
                return if negated { Formula::Not(Box::new(not_null)) } else { not_null };
            }
        }
        let (op, kl, kr) = match (kind, op) {
            (AExprKind::AexprOp, ">") => ("<", kr, kl),
            (AExprKind::AexprOp | AExprKind::AexprDistinct, "=" | "") if kr < kl => (op, kr, kl),
            _ => (op, kl, kr),
        };
        let atom = self.keyed(format!("cmp:{}:{op}:{kl}:{kr}", kind as i32), None);
        if negated {
            Formula::Not(Box::new(atom))
        } else {
            atom
        }
    }

    /// The row-dependent atom of `node`: equal expressions share one.
    fn atom(&mut self, node: &NodeEnum) -> Formula {
        self.keyed(key(node), None)
    }

    fn keyed(&mut self, key: String, null_column: Option<String>) -> Formula {
        if let Some(&i) = self.index.get(&key) {
            return Formula::Atom(i);
        }
        self.index.insert(key, self.list.len());
        self.list.push(Atom { row_independent: false, null_column });
        Formula::Atom(self.list.len() - 1)
    }
}

/// Is there a choice of the row-independent atoms under which `f` is true
/// for every choice of the others? `assumed_not_null[i]`: atom `i` (an IS
/// NULL test) is false.
fn tautology(f: &Formula, atoms: &[Atom], assumed_not_null: &[bool], budget: &mut u64) -> bool {
    match f {
        Formula::Const(b) => *b,
        // Exact for the row atoms; for row-independent ones it may answer
        // "trivial" where no single choice serves every conjunct: a refusal.
        Formula::And(xs) => !xs.is_empty() && xs.iter().all(|x| tautology(x, atoms, assumed_not_null, budget)),
        _ => truth_table(f, atoms, assumed_not_null, budget),
    }
}

/// Only atoms that occur both plain and negated need trying both ways: for
/// one that occurs only plain, "false" is the worst case for the row atoms
/// and "true" the best for the row-independent ones (the other way round when
/// it occurs only negated). A formula too large to decide within
/// the remaining `budget` counts as trivial: refused, never waved through.
fn truth_table(f: &Formula, atoms: &[Atom], assumed_not_null: &[bool], budget: &mut u64) -> bool {
    let n = atoms.len();
    let size = size(f);
    // The walk below is work too.
    let walk = (n + size) as u64;
    if walk > *budget {
        return true;
    }
    *budget -= walk;
    let (mut pos, mut neg) = (vec![false; n], vec![false; n]);
    polarity(f, true, &mut pos, &mut neg);
    let mut values = vec![false; n];
    let (mut fixed, mut free) = (Vec::new(), Vec::new());
    for i in 0..n {
        let independent = atoms[i].row_independent;
        if assumed_not_null.get(i).copied().unwrap_or(false) {
            values[i] = false;
        } else if pos[i] && neg[i] {
            if independent {
                fixed.push(i)
            } else {
                free.push(i)
            }
        } else {
            // Only plain: row atoms false, independent true; only negated: the reverse.
            values[i] = pos[i] == independent;
        }
    }
    let vars = fixed.len() + free.len();
    let cost = if vars >= 32 { u64::MAX } else { (1u64 << vars).saturating_mul(size as u64) };
    if cost > *budget {
        return true;
    }
    *budget -= cost;
    (0..1u32 << fixed.len()).any(|c| {
        for (bit, &i) in fixed.iter().enumerate() {
            values[i] = c & (1 << bit) != 0;
        }
        (0..1u32 << free.len()).all(|r| {
            for (bit, &i) in free.iter().enumerate() {
                values[i] = r & (1 << bit) != 0;
            }
            eval(f, &values)
        })
    })
}

fn polarity(f: &Formula, plain: bool, pos: &mut [bool], neg: &mut [bool]) {
    match f {
        Formula::Atom(i) if plain => pos[*i] = true,
        Formula::Atom(i) => neg[*i] = true,
        Formula::Const(_) => {}
        Formula::Not(x) => polarity(x, !plain, pos, neg),
        Formula::And(xs) | Formula::Or(xs) => xs.iter().for_each(|x| polarity(x, plain, pos, neg)),
    }
}

fn size(f: &Formula) -> usize {
    match f {
        Formula::Atom(_) | Formula::Const(_) => 1,
        Formula::Not(x) => 1 + size(x),
        Formula::And(xs) | Formula::Or(xs) => 1 + xs.iter().map(size).sum::<usize>(),
    }
}

fn eval(f: &Formula, values: &[bool]) -> bool {
    match f {
        Formula::Atom(i) => values[*i],
        Formula::Const(b) => *b,
        Formula::Not(x) => !eval(x, values),
        Formula::And(xs) => xs.iter().all(|x| eval(x, values)),
        Formula::Or(xs) => xs.iter().any(|x| eval(x, values)),
    }
}

/// What `e` compares like, for deciding a comparison of an expression with
/// itself: arithmetic with a constant (`id + 0`, `id * 1`), a cast and a
/// `coalesce` whose other arguments are constants are read as their column
/// expression (constants' values never matter here, so `id + 0 = id` is
/// `id = id` — a refusal where the constant would not make it one, never a
/// pass where it would).
fn same_rows(mut e: &NodeEnum) -> &NodeEnum {
    let constant = |n: &Node| !n.node.as_ref().is_some_and(super::mentions_a_column);
    loop {
        e = uncast(e);
        let next = match e {
            NodeEnum::AExpr(a) if a.kind() == AExprKind::AexprOp => {
                let arithmetic = a.name.last().and_then(|n| n.node.as_ref()).is_some_and(
                    |n| matches!(n, NodeEnum::String(s) if matches!(s.sval.as_str(), "+" | "-" | "*" | "/" | "%" | "^" | "||")),
                );
                match (a.lexpr.as_deref(), a.rexpr.as_deref()) {
                    (Some(l), Some(r)) if arithmetic && constant(r) => Some(l),
                    (Some(l), Some(r)) if arithmetic && constant(l) => Some(r),
                    (None, Some(r)) if arithmetic => Some(r),
                    _ => None,
                }
            }
            NodeEnum::FuncCall(f)
                if f.funcname
                    .last()
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(|n| matches!(n, NodeEnum::String(s) if s.sval.eq_ignore_ascii_case("coalesce")))
                    && f.args.len() > 1
                    && f.args[1..].iter().all(constant) =>
            {
                f.args.first()
            }
            NodeEnum::CoalesceExpr(c) if c.args.len() > 1 && c.args[1..].iter().all(constant) => c.args.first(),
            _ => None,
        };
        match next.and_then(|n| n.node.as_ref()) {
            Some(n) => e = n,
            None => return e,
        }
    }
}

/// An operator's operands: its sides, a list on the right (`IN (…)`,
/// `BETWEEN … AND …`) item by item.
fn operands(a: &pg_query::protobuf::AExpr) -> Vec<&Node> {
    let mut v: Vec<&Node> = a.lexpr.as_deref().into_iter().collect();
    match a.rexpr.as_deref() {
        Some(Node { node: Some(NodeEnum::List(l)) }) => v.extend(&l.items),
        Some(r) => v.push(r),
        None => {}
    }
    v
}

/// The names of a column reference (`t.c`: `["t", "c"]`); `None` for `t.*`.
fn column_names(c: &pg_query::protobuf::ColumnRef) -> Option<Vec<&str>> {
    c.fields
        .iter()
        .map(|f| match f.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// `e` without the casts around it.
fn uncast(mut e: &NodeEnum) -> &NodeEnum {
    while let NodeEnum::TypeCast(c) = e {
        match c.arg.as_deref().and_then(|a| a.node.as_ref()) {
            Some(inner) => e = inner,
            None => break,
        }
    }
    e
}

/// `x IN (…, x, …)`, `x = ANY (ARRAY[…, x, …])`, `x BETWEEN x AND x` and
/// their negations: decided when the left side (key `kl`) is among the
/// candidates on the right.
fn self_membership(kind: AExprKind, op: Option<&str>, kl: &str, r: &NodeEnum) -> Option<bool> {
    let items: Vec<String> = match r {
        NodeEnum::List(l) => l.items.iter().filter_map(|i| i.node.as_ref()).map(|i| key(same_rows(i))).collect(),
        NodeEnum::AArrayExpr(a) => {
            a.elements.iter().filter_map(|i| i.node.as_ref()).map(|i| key(same_rows(i))).collect()
        }
        _ => return None,
    };
    let any = items.iter().any(|i| i == kl);
    let all = !items.is_empty() && items.iter().all(|i| i == kl);
    match (kind, op) {
        (AExprKind::AexprIn | AExprKind::AexprOpAny, Some("=")) if any => Some(true),
        (AExprKind::AexprIn | AExprKind::AexprOpAll, Some("<>" | "!=")) if any => Some(false),
        (AExprKind::AexprOpAll, Some("=" | ">=" | "<=")) if all => Some(true),
        (AExprKind::AexprOpAny, Some("<>" | "!=" | "<" | ">")) if all => Some(false),
        (AExprKind::AexprBetween | AExprKind::AexprBetweenSym, _) if all => Some(true),
        (AExprKind::AexprNotBetween | AExprKind::AexprNotBetweenSym, _) if all => Some(false),
        _ => None,
    }
}

/// The truth a row-independent condition is written with: `true`,
/// `false` (keywords to the lexer, so the analysis caches keep them apart)
/// and NULL (no row kept); any other constant is the attacker's pick.
fn constant_truth(n: &NodeEnum) -> Option<Formula> {
    match uncast(n) {
        NodeEnum::AConst(c) if c.isnull => Some(Formula::Const(false)),
        NodeEnum::AConst(c) => match &c.val {
            Some(pg_query::protobuf::a_const::Val::Boolval(b)) => Some(Formula::Const(b.boolval)),
            _ => None,
        },
        _ => None,
    }
}

/// The comparison `l = r` (a simple CASE's test of its operand).
fn equals(l: &Node, r: &Node) -> NodeEnum {
    NodeEnum::AExpr(Box::new(pg_query::protobuf::AExpr {
        kind: AExprKind::AexprOp as i32,
        name: vec![Node { node: Some(NodeEnum::String(pg_query::protobuf::String { sval: "=".into() })) }],
        lexpr: Some(Box::new(l.clone())),
        rexpr: Some(Box::new(r.clone())),
        ..Default::default()
    }))
}

/// Is `n` a condition (its value a truth value the formula can reason about)?
fn truth_valued(n: &NodeEnum) -> bool {
    // A result of a CASE or coalesce: a condition or a written truth value.
    let condition = |n: &Node| n.node.as_ref().is_some_and(|n| truth_valued(n) || constant_truth(n).is_some());
    match n {
        NodeEnum::CaseExpr(c) => {
            c.args.iter().all(|w| match w.node.as_ref() {
                Some(NodeEnum::CaseWhen(w)) => w.result.as_deref().is_some_and(condition),
                _ => false,
            }) && c.defresult.as_deref().is_none_or(condition)
        }
        NodeEnum::CoalesceExpr(c) => !c.args.is_empty() && c.args.iter().all(condition),
        NodeEnum::BoolExpr(_) | NodeEnum::NullTest(_) | NodeEnum::BooleanTest(_) => true,
        NodeEnum::AExpr(e) => match e.kind() {
            AExprKind::AexprOp => e.name.last().and_then(|n| n.node.as_ref()).is_some_and(|n| {
                matches!(n, NodeEnum::String(s) if matches!(s.sval.as_str(),
                    "=" | "<>" | "!=" | "<" | ">" | "<=" | ">=" | "~~" | "!~~" | "~~*" | "!~~*" | "~" | "!~" | "~*" | "!~*"))
            }),
            AExprKind::AexprOpAny
            | AExprKind::AexprOpAll
            | AExprKind::AexprDistinct
            | AExprKind::AexprNotDistinct
            | AExprKind::AexprIn
            | AExprKind::AexprLike
            | AExprKind::AexprIlike
            | AExprKind::AexprSimilar
            | AExprKind::AexprBetween
            | AExprKind::AexprNotBetween
            | AExprKind::AexprBetweenSym
            | AExprKind::AexprNotBetweenSym => true,
            _ => false,
        },
        _ => false,
    }
}

/// The constant pattern of a pattern match (`LIKE`, `ILIKE`, `SIMILAR TO`,
/// `~`, `~*`; `op` already stripped of its negation).
fn constant_pattern<'a>(kind: AExprKind, op: &str, r: &'a NodeEnum) -> Option<&'a str> {
    let pattern_op = match kind {
        AExprKind::AexprLike | AExprKind::AexprIlike | AExprKind::AexprSimilar => true,
        AExprKind::AexprOp => matches!(op, "~~" | "~~*" | "~" | "~*"),
        _ => false,
    };
    if !pattern_op {
        return None;
    }
    let mut r = r;
    loop {
        r = match uncast(r) {
            // SIMILAR TO's pattern is wrapped: similar_to_escape('%').
            NodeEnum::FuncCall(f) if f.args.len() == 1 => f.args[0].node.as_ref()?,
            NodeEnum::AConst(c) => {
                return match &c.val {
                    Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.as_str()),
                    _ => None,
                }
            }
            _ => return None,
        };
    }
}

/// Does the pattern match every string?
fn matches_everything(kind: AExprKind, op: &str, pattern: &str) -> bool {
    let regex = kind == AExprKind::AexprOp && matches!(op, "~" | "~*");
    if regex {
        // (`.` matches newlines too in PostgreSQL's default regex mode.)
        matches!(pattern, "" | "^" | "$" | ".*" | "^.*" | ".*$" | "^.*$" | "(.*)" | "^(.*)$")
    } else {
        !pattern.is_empty() && pattern.bytes().all(|b| b == b'%')
    }
}

/// The expression's identity: its parse tree without source locations and
/// with every constant's value removed (only `NULL` stays distinct).
fn key(n: &NodeEnum) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("location");
                if let Some(serde_json::Value::Object(c)) = m.get_mut("AConst") {
                    let isnull = c.get("isnull").cloned().unwrap_or(serde_json::Value::Bool(false));
                    c.clear();
                    c.insert("isnull".into(), isnull);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match serde_json::to_value(n) {
        Ok(mut v) => {
            strip(&mut v);
            v.to_string()
        }
        // Never seen: a unique key, so it equals nothing else.
        Err(_) => format!("unserializable:{:p}", n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(where_clause: &str) -> WhereTruth {
        let parsed = pg_query::parse(&format!("DELETE FROM t WHERE {where_clause}"), 0).expect("parses");
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()).expect("a statement");
        let NodeEnum::DeleteStmt(d) = stmt else { panic!("not a DELETE") };
        where_truth(d.where_clause.as_deref(), d.relation.as_ref())
    }

    #[test]
    fn logical_tautologies_are_trivial() {
        for w in [
            "id = 1 OR NOT id = 1",
            "(id = 1) IS NOT TRUE OR id = 1",
            "id IS NULL OR id IS NOT NULL",
            "NOT (id = 1 AND NOT id = 1)",
            "(a = 1 OR b = 2) OR NOT (a = 1 OR b = 2)",
            "coalesce(id, 0) = coalesce(id, 0)",
            "lower(name) >= lower(name)",
            "id + 0 = id + 1",
            "id IS NOT DISTINCT FROM id",
            "id = 1 OR now() IS NOT NULL",
            "id = id AND name = name",
            "id = 5 OR id <> 5",
            "5 = id OR NOT id = 5",
            "id < 3 OR id >= 3",
            "id > 3 OR 3 >= id",
            "name LIKE 'a%' OR name NOT LIKE 'a%'",
            "id IN (1, 2) OR id NOT IN (1, 2)",
            "id BETWEEN 1 AND 5 OR id NOT BETWEEN 1 AND 5",
            "a IS DISTINCT FROM b OR a IS NOT DISTINCT FROM b",
            // The left side is among the candidates.
            "id IN (id)",
            "id IN (1, id, 3)",
            "id = ANY (ARRAY[id])",
            "id = ANY (ARRAY[2, id])",
            "id = ALL (ARRAY[id, id])",
            "id BETWEEN id AND id",
            "id BETWEEN SYMMETRIC id AND id",
            "NOT id NOT IN (id)",
            "NOT id NOT BETWEEN id AND id",
            "NOT id <> ALL (ARRAY[id])",
            // Arithmetic with constants, casts, coalesce with constants.
            "id + 0 = id",
            "0 + id = id",
            "id * 1 >= id",
            "-id = -id",
            "id::bigint = id",
            "id::text = id::text",
            "coalesce(id, 0) = id",
            "name || '' = name",
            // Row null tests are tests of their fields.
            "ROW(id) IS NULL OR ROW(id) IS NOT NULL",
            "(a, b) IS NULL OR a IS NOT NULL OR b IS NOT NULL",
            // Patterns that match every string, on a column that is never NULL here.
            "name LIKE '%' OR name IS NULL",
            "name::text ILIKE '%%' OR name IS NULL",
            "name ~ '' OR name IS NULL",
            "name ~* '^.*$' OR name IS NULL",
            "name SIMILAR TO '%' OR name IS NULL",
            "name ~~ '%' OR name IS NULL",
            "NOT name NOT LIKE '%' OR name IS NULL",
            // Truth values compared.
            "(id = id) = true",
            "(id = 1) <> (id = 1) IS NOT TRUE",
            "(a = 1 OR NOT a = 1) IS NOT DISTINCT FROM true",
            "true = (id = id)",
            // Every constant is a pick of its own, however alike they look.
            "(id = 1) = true OR (id = 1) = false",
            "(id = 1) = 't' OR (id = 1) = 'f'",
            "(id = 1) = $1 OR (id = 1) = $2",
            // CASE and coalesce as conditions.
            "CASE WHEN id = 1 THEN true ELSE true END",
            "CASE id WHEN 1 THEN true ELSE true END",
            "CASE WHEN id = 1 THEN true ELSE NOT id = 1 END",
            "CASE WHEN id = 1 THEN true WHEN id <> 1 THEN true END",
            "(CASE WHEN id = 1 THEN true ELSE true END) = true",
            "CASE WHEN id = 1 THEN 't' ELSE 't' END::boolean",
            "coalesce(id = 1, true) OR id <> 1",
        ] {
            assert!(truth(w).trivial, "{w}");
        }
        // Truth values compared 40 deep would copy 2^40 formula nodes: refused, at once.
        let deep = format!("{}(a = 1){}", "(".repeat(40), " = true)".repeat(40));
        let started = std::time::Instant::now();
        assert!(truth(&deep).trivial);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(!truth(&format!("{}(a = 1){}", "(".repeat(4), " = true)".repeat(4))).trivial);
        // So would CASEs nested in their conditions (each holds its
        // condition twice). Coalesces nested in their first argument grow
        // only linearly, but 40 of them are 40 variables to try both ways:
        // beyond the work bound, refused at once as well.
        let deep = format!("{}a = 1{}", "CASE WHEN ".repeat(20), " THEN b = 1 ELSE c = 1 END".repeat(20));
        let started = std::time::Instant::now();
        assert!(truth(&deep).trivial);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let deep = format!("{}a = 1{}", "coalesce(".repeat(40), ", b = 1)".repeat(40));
        let started = std::time::Instant::now();
        assert!(truth(&deep).trivial);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn real_filters_are_not() {
        for w in [
            "id = 1",
            "id = 1 AND true",
            "id = 1 OR id = 2",
            "id <> id",
            "id = 1 AND NOT id = 1",
            "deleted_at IS NOT NULL",
            "id > 0",
            "id IN (SELECT id FROM t)",
            "a = 1 AND (b = 2 OR NOT b = 2)",
            "id = 5 OR id > 5",
            "id < 3 OR id > 3",
            "a = b OR a <> c",
            "id IN (1, 2)",
            "id = ANY (ARRAY[1, 2])",
            "id = ANY (ARRAY[other])",
            "id = ALL (ARRAY[id, 2])",
            "id BETWEEN id AND 5",
            "id NOT IN (id)",
            "id + 1 > id",
            "id + other = id",
            "ROW(a, b) IS NOT NULL",
            "name LIKE '%'",
            "name LIKE 'a%' OR name IS NULL",
            "name LIKE '' OR name IS NULL",
            "name ~ '^$' OR name IS NULL",
            "name ~ '.' OR name IS NULL",
            "name NOT LIKE '%' OR name IS NULL",
            "(a = 1) = true",
            "(a = 1) = (b = 2)",
            "(a = 1) <> (a = 2)",
            "(a = 1) = true OR (a = 1) = true",
            "CASE WHEN id = 1 THEN true ELSE false END",
            "CASE id WHEN 1 THEN true END",
            "CASE WHEN id = 1 THEN false ELSE id = 2 END",
            "CASE WHEN a = 1 THEN 1 ELSE 2 END = 1",
            "coalesce(id = 1, false)",
            "coalesce(flag, false)",
            "(id = 1) IS NOT NULL",
            "(id = 1) IS NOT UNKNOWN",
        ] {
            assert!(!truth(w).trivial, "{w}");
        }
    }

    /// Trivial once exactly the columns in `not_null` are NOT NULL?
    fn trivial_given(where_clause: &str, not_null: &[&str]) -> bool {
        let t = truth(where_clause);
        assert!(!t.trivial, "{where_clause} is trivial without the schema");
        t.null_tests.is_some_and(|n| n.trivial_given(|c| not_null.contains(&c)))
    }

    #[test]
    fn null_tests_of_not_null_columns_are_decided_by_the_schema() {
        assert!(trivial_given("id IS NOT NULL", &["id"]));
        assert!(!trivial_given("id IS NOT NULL", &["other"]));
        assert!(trivial_given("NOT (t.id IS NULL)", &["id"]));
        assert!(trivial_given("id IS DISTINCT FROM NULL", &["id"]));
        assert!(trivial_given("a IS NOT NULL AND b IS NOT NULL", &["a", "b"]));
        assert!(!trivial_given("a IS NOT NULL AND b IS NOT NULL", &["a"]));
        assert!(trivial_given("a IS NOT NULL OR b IS NOT NULL", &["b"]));
        // However many columns are tested.
        let many = "c1 IS NOT NULL OR c2 IS NOT NULL OR c3 IS NOT NULL OR c4 IS NOT NULL OR c5 IS NOT NULL \
                    OR c6 IS NOT NULL OR c7 IS NOT NULL";
        assert!(trivial_given(many, &["c7"]));
        assert!(!trivial_given(many, &[]));
        assert!(!trivial_given("id IS NOT NULL AND id = 3", &["id"]));
        assert!(!trivial_given("id IS NULL", &["id"]));
        assert!(trivial_given("ROW(id) IS NOT NULL", &["id"]));
        assert!(trivial_given("(a, b) IS NOT NULL", &["a", "b"]));
        assert!(!trivial_given("(a, b) IS NOT NULL", &["a"]));
        assert!(trivial_given("name LIKE '%'", &["name"]));
        assert!(trivial_given("id::text LIKE '%%'", &["id"]));
        assert!(!trivial_given("name LIKE 'a%'", &["name"]));
        assert!(trivial_given("(id IS NULL) = false", &["id"]));
        // A comparison is NULL exactly when a side is.
        assert!(trivial_given("(id = 1) IS NOT NULL", &["id"]));
        assert!(trivial_given("(id = 1) IS DISTINCT FROM NULL", &["id"]));
        assert!(trivial_given("(id = 1) IS NOT UNKNOWN", &["id"]));
        assert!(trivial_given("(id + 1 > 5)::boolean IS NOT NULL", &["id"]));
        assert!(!trivial_given("(id = other) IS NOT NULL", &["id"]));
        assert!(trivial_given("(id = other) IS NOT NULL", &["id", "other"]));
        assert!(trivial_given("coalesce(id = 1 OR id <> 1, false)", &["id"]));
        assert!(!trivial_given("coalesce(id = 1, true)", &["id"]));
        // A subquery that returns the column from every row of the same table.
        for w in [
            "id IN (SELECT id FROM t)",
            "t.id IN (SELECT x.id FROM t x)",
            "id = ANY (SELECT id FROM public.t)",
            "id IN (SELECT DISTINCT id FROM t ORDER BY 1)",
            "id IN (SELECT id FROM t WHERE true)",
            "id IN (SELECT id FROM t WHERE id = id)",
            "id::text IN (SELECT id FROM t)",
            "NOT id NOT IN (SELECT id FROM t)",
        ] {
            assert!(trivial_given(w, &["id"]), "{w}");
        }
        for w in [
            "id IN (SELECT id FROM t WHERE a = 1)",
            "id IN (SELECT id FROM other)",
            "id IN (SELECT other_id FROM t)",
            "id IN (SELECT id FROM t LIMIT 5)",
            "id IN (SELECT id FROM t UNION SELECT 1)",
            "id IN (SELECT id FROM t GROUP BY id HAVING count(*) > 1)",
            "id <> ALL (SELECT id FROM t)",
            "u.id IN (SELECT id FROM t)",
        ] {
            assert!(!trivial_given(w, &["id"]), "{w}");
        }
        assert!(truth("id = 3").null_tests.is_none());
        let t = truth("a IS NULL OR b = 1").null_tests.unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn constants_values_never_matter() {
        // Texts that differ only in constants share cached analyses.
        assert_eq!(truth("coalesce(id, 0) = coalesce(id, 1)"), truth("coalesce(id, 0) = coalesce(id, 0)"));
        assert_eq!(truth("id = 1 OR NOT id = 2"), truth("id = 1 OR NOT id = 1"));
        // Except a pattern's, which says so (no template may serve it).
        assert!(truth("name LIKE 'a%'").pattern_read);
        assert!(truth("name ~ 'a'").pattern_read);
        assert!(!truth("name = 'a'").pattern_read);
    }

    #[test]
    fn large_conjunctions_are_split_not_refused() {
        let w: Vec<String> = (0..40).map(|i| format!("c{i} = {i}")).collect();
        assert!(!truth(&w.join(" AND ")).trivial);
        let mut t: Vec<String> = (0..40).map(|i| format!("(c{i} = 1 OR NOT c{i} = 1)")).collect();
        assert!(truth(&t.join(" AND ")).trivial);
        t.push("c99 = 1".into());
        assert!(!truth(&t.join(" AND ")).trivial);
    }
}
