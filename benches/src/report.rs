//! Medians and Markdown: how each figure reaches RESULTS.md.

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

/// The median of `xs` and the range of the runs, each written by `write`:
/// `median (lowest–highest)`, how RESULTS.md quotes a figure of several runs.
pub fn spread(xs: &[f64], write: fn(f64) -> String) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}–{})", write(median(xs)), write(lo), write(hi))
}

/// A Markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.header);
        s.push_str(&line(&self.header.iter().map(|_| "---".to_string()).collect::<Vec<_>>()));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// A figure with a sensible number of digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A ratio, as `0.97×`.
pub fn ratio(x: f64) -> String {
    if x.is_finite() { format!("{x:.2}×") } else { "–".into() }
}

/// One target of the issue, with what was measured.
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
    /// What the same run's figures say about a miss (printed only then).
    pub why: Option<String>,
}

impl Target {
    pub fn new(what: impl Into<String>, goal: impl Into<String>, measured: impl Into<String>, met: bool) -> Self {
        Self { what: what.into(), goal: goal.into(), measured: measured.into(), met, why: None }
    }

    /// The explanation to print if this target is missed.
    pub fn why_if_missed(mut self, why: impl Into<String>) -> Self {
        self.why = Some(why.into());
        self
    }
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut t = Table::new(&["target", "goal", "measured", "met"]);
    for x in targets {
        t.row(vec![x.what.clone(), x.goal.clone(), x.measured.clone(), if x.met { "yes" } else { "**no**" }.into()]);
    }
    t.markdown()
}

/// Each missed target with its explanation from the run's own figures.
pub fn missed(targets: &[Target]) -> String {
    let missed: Vec<&Target> = targets.iter().filter(|t| !t.met).collect();
    if missed.is_empty() {
        return "Every target is met.\n".into();
    }
    let mut s = String::new();
    for t in missed {
        let why = t.why.as_deref().unwrap_or("Not explained yet.");
        s.push_str(&format!("- **{}**: {} (goal {}). {why}\n", t.what, t.measured, t.goal));
    }
    s
}
