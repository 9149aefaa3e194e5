// Matrix-vector-threshold unit with PE x SIMD folding.
//
// For every input vector x (MATRIX_COLS elements; a window from bnnc_swg or a pixel) the unit computes MATRIX_ROWS
// outputs on PE rows x SIMD lanes: each cycle ("fold" (nf, sf)) row p of the PE rows handles
// matrix row o = nf*PE + p and lanes s handle columns k = sf*SIMD + s, so a vector takes
// NF*SF = ceil(MATRIX_ROWS/PE) * ceil(MATRIX_COLS/SIMD) cycles. Rows o >= MATRIX_ROWS and lanes k >= MATRIX_COLS of the last folds
// are idle: their weight and mask bits and inputs are 0, so they add exactly 0.
//
// The weights are PLANES popcount planes (compiler/weight_planes.py): plane j has XOR bits b_j when
// PLANE_FLIPS[j] and a lane mask m_j when PLANE_MASKS[j] (else b_j = 0, m_j = all ones). Per row and plane it
// accumulates s_j over the SF folds:
//   INPUT_BITS == 1 (binary):  s_j = popcount((x XOR b_j) AND m_j), bits 1 = -1 (the XNOR-popcount of +-1 products)
//   INPUT_BITS  > 1 (integer): s_j = sum over lanes with m_j of (b_j ? -x : x), x signed INPUT_BITS-bit
// The compared value is c = s_0 (GAINS_IN_TABLE == 0), or with gains in the table (GAINS_IN_TABLE == 1) c = sum_j g_j * s_j,
// computed in VALUE_BITS bits. Then, with per-(class, row) tables from TABLE_FILE (class = border class of the
// output position, ROW_CLASSES[out_row] * COL_CLASS_COUNT + COL_CLASSES[out_col], see compiler/passes/layout_folded_layers.py):
//   THRESHOLDS >= 1: per threshold j, bit_j = (c > thr_j) XOR flag; ACT_PLANES == 1: out = LEVEL_BASE + LEVEL_STEP * (number of
//            bits set) (THRESHOLDS = 1, LEVEL_BASE = 0, LEVEL_STEP = 1: one output bit; THRESHOLDS > 1: a multi-bit activation);
//            ACT_PLANES == THRESHOLDS > 1 (activation planes): each threshold has its own flag, and output element
//            j * MATRIX_ROWS + o is row o's bit_j
//   THRESHOLDS == 0: acc = off + c (GAINS_IN_TABLE == 1), or off + (flag ? GAIN * s_0 : 0) (GAINS_IN_TABLE == 0); out = acc, or with
//            REQUANTIZE == 1 (a fixed-point requantization, ir.Requantize) clamp(floor((clamp(acc >> PRE_SHIFT, lo, hi) *
//            mult + add) / 2**SHIFT), OUT_MIN, OUT_MAX) with per-row mult, add, lo, hi in the table after off
// Weights: WEIGHT_FILE, NF*SF words of NA*PE*SIMD bits (NA = stored arrays: b_j then m_j for each plane in
// order; array i row p lane s at bit (i*PE + p)*SIMD + s), address nf*SF + sf; when NF*SF > WEIGHT_BANK_DEPTH the file
// holds them as banks side by side (bnnc_rom, LATENCY 2). Tables: TABLE_FILE,
// BORDER_CLASSES*NF words of PE*EW bits, EW = NV*TABLE_BITS + GAINS_IN_TABLE*PLANES*GAIN_BITS + NFL, NV = 5 (REQUANTIZE) or max(THRESHOLDS,1) (row p at
// p*EW: thresholds / offset, mult, add, lo, hi at j*TABLE_BITS, gains at NV*TABLE_BITS + j*GAIN_BITS, then NFL flags), address
// class*NF + nf.
//
// Pipeline: issue (fold counters) -> weight read (two cycles) -> operands -> sum tree -> accumulate ->
// threshold/offset (a requantization: four more registers; a count of THRESHOLDS > 1 compare bits:
// COUNT_STAGES more) -> output pixel
// of MATRIX_ROWS*ACT_PLANES*OUT_BITS bits. The whole unit stalls only while a finished output waits for out_ready; the
// next input vector is latched during the last fold of the current one, so back-to-back vectors
// run without bubbles.
`default_nettype none
module bnnc_mvtu #(
    parameter int MATRIX_ROWS = 4,
    parameter int MATRIX_COLS = 8,
    parameter int PE = 2,
    parameter int SIMD = 4,
    parameter int INPUT_BITS = 1,
    parameter int SUM_BITS = 8,
    parameter int THRESHOLDS = 1,
    parameter int TABLE_BITS = 8,
    parameter int ACC_BITS = 8,
    parameter int GAIN = -2,
    parameter int BORDER_CLASSES = 1,
    parameter int COL_CLASS_COUNT = 1,
    parameter int OUT_ROWS = 1,
    parameter int OUT_COLS = 1,
    parameter int ROW_CLASS_BITS = 1,
    parameter int COL_CLASS_BITS = 1,
    parameter logic [OUT_ROWS*ROW_CLASS_BITS-1:0] ROW_CLASSES = '0,
    parameter logic [OUT_COLS*COL_CLASS_BITS-1:0] COL_CLASSES = '0,
    parameter WEIGHT_FILE = "",
    parameter TABLE_FILE = "",
    parameter int LEVEL_BASE = 0,
    parameter int LEVEL_STEP = 1,
    parameter int PLANES = 1,
    parameter logic [PLANES-1:0] PLANE_FLIPS = '1,
    parameter logic [PLANES-1:0] PLANE_MASKS = '0,
    parameter int GAINS_IN_TABLE = 0,
    parameter int GAIN_BITS = 1,
    parameter int VALUE_BITS = 1,
    parameter int ACT_PLANES = 1,
    parameter int REQUANTIZE = 0,
    parameter int SHIFT = 0,
    parameter int PRE_SHIFT = 0,
    // integer multiply-accumulate (real-valued layers): WEIGHT_FILE holds one signed WEIGHT_BITS-bit weight per
    // row and lane, w = sum_j g_j * (b_j ? -1 : 1) * m_j of the planes, and the compared value is sum of x * w
    parameter int MAC = 0,
    parameter int WEIGHT_BITS = 1,
    parameter int OUT_MIN = 0,
    parameter int OUT_MAX = 0,
    parameter int PRODUCT_BITS = 1,
    // sum tree: lanes per first-level register (bit lanes: a popcount; integer lanes: adders) and
    // values added per further register level
    parameter int POPCOUNT_LANES = 16,
    parameter int ADDER_LANES = 2,
    parameter int ADDER_FANIN = 2,
    // weight memories deeper than this are stored as banks side by side (bnnc_rom, matrix_unit.WEIGHT_BANK_DEPTH)
    parameter int WEIGHT_BANK_DEPTH = 512,
    // output element bits (signed when LEVEL_BASE < 0)
    parameter int OUT_BITS = THRESHOLDS == 0 ? ACC_BITS : ACT_PLANES > 1 ? 1 : $clog2(THRESHOLDS + 1),
    localparam int RB = OUT_ROWS > 1 ? $clog2(OUT_ROWS) : 1,
    localparam int COLB = OUT_COLS > 1 ? $clog2(OUT_COLS) : 1
) (
    input  logic             clk,
    input  logic             rst_n,
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [MATRIX_COLS*INPUT_BITS-1:0] in_data,
    input  logic [   RB-1:0] in_row,
    input  logic [ COLB-1:0] in_col,
    output logic             out_valid,
    input  logic             out_ready,
    output logic [MATRIX_ROWS*ACT_PLANES*OUT_BITS-1:0] out_data
);
  // stored weight arrays before plane j: its b at array_b(j), its m at array_b(j) + PLANE_FLIPS[j]
  function automatic int array_b(input int j);
    array_b = 0;
    for (int i = 0; i < j; i++) array_b += int'(PLANE_FLIPS[i]) + int'(PLANE_MASKS[i]);
  endfunction
  localparam int NA = array_b(PLANES);
  localparam int WW = MAC == 1 ? PE * SIMD * WEIGHT_BITS : NA * PE * SIMD;  // bits of a weight word
  localparam int NFL = ACT_PLANES > 1 ? THRESHOLDS : 1;  // flags per table entry
  localparam int VT = (REQUANTIZE == 1 ? 5 : THRESHOLDS > 0 ? THRESHOLDS : 1) * TABLE_BITS;  // bits of the values of a table entry
  localparam int CB = GAINS_IN_TABLE == 1 ? VALUE_BITS : SUM_BITS;  // width of the compared value

  localparam int NF = (MATRIX_ROWS + PE - 1) / PE;
  localparam int SF = (MATRIX_COLS + SIMD - 1) / SIMD;
  localparam int NFW = NF > 1 ? $clog2(NF) : 1;
  localparam int SFW = SF > 1 ? $clog2(SF) : 1;
  localparam int WD = NF * SF;
  localparam int WAW = WD > 1 ? $clog2(WD) : 1;
  localparam int TD = BORDER_CLASSES * NF;
  localparam int TAW = TD > 1 ? $clog2(TD) : 1;
  localparam int KB = BORDER_CLASSES > 1 ? $clog2(BORDER_CLASSES) : 1;
  localparam int EW = VT + GAINS_IN_TABLE * PLANES * GAIN_BITS + NFL;
  localparam int LW = SIMD * INPUT_BITS;  // bits of one fold's input chunk
  localparam int CMW = CB > TABLE_BITS ? CB : TABLE_BITS;  // width in which the compared value meets its thresholds
  localparam int NW = $clog2((THRESHOLDS > 0 ? THRESHOLDS : 1) + 1);  // width of a threshold count

  // elaboration-time checks: a parameter set the unit cannot implement stops synthesis and simulation
  if (PE < 1 || PE > MATRIX_ROWS) begin : g_check_pe
    $error("bnnc_mvtu: PE=%0d must be in 1..MATRIX_ROWS=%0d", PE, MATRIX_ROWS);
  end
  if (SIMD < 1 || SIMD > MATRIX_COLS) begin : g_check_simd
    $error("bnnc_mvtu: SIMD=%0d must be in 1..MATRIX_COLS=%0d", SIMD, MATRIX_COLS);
  end
  if (INPUT_BITS < 1 || THRESHOLDS < 0 || PLANES < 1 || BORDER_CLASSES < 1) begin : g_check_sizes
    $error("bnnc_mvtu: INPUT_BITS=%0d, PLANES=%0d and BORDER_CLASSES=%0d must be at least 1, THRESHOLDS=%0d at least 0", INPUT_BITS, PLANES, BORDER_CLASSES, THRESHOLDS);
  end
  if (ACT_PLANES != 1 && ACT_PLANES != THRESHOLDS) begin : g_check_planes
    $error("bnnc_mvtu: ACT_PLANES=%0d activation planes need one threshold each (THRESHOLDS=%0d)", ACT_PLANES, THRESHOLDS);
  end
  if (REQUANTIZE != 0 && (REQUANTIZE != 1 || THRESHOLDS != 0)) begin : g_check_requantize
    $error("bnnc_mvtu: REQUANTIZE=%0d: a requantization (REQUANTIZE=1) works on accumulators (THRESHOLDS=0, not %0d)", REQUANTIZE, THRESHOLDS);
  end
  if (MAC != 0 && (MAC != 1 || INPUT_BITS < 2 || GAINS_IN_TABLE != 1 || SUM_BITS != VALUE_BITS)) begin : g_check_mac
    $error("bnnc_mvtu: MAC=%0d: a multiply-accumulate unit (MAC=1) takes integer inputs (INPUT_BITS=%0d) and the compared value's table layout (GAINS_IN_TABLE=1, SUM_BITS=VALUE_BITS)", MAC, INPUT_BITS);
  end
  if (GAINS_IN_TABLE != 0 && GAINS_IN_TABLE != 1) begin : g_check_gains
    $error("bnnc_mvtu: GAINS_IN_TABLE=%0d must be 0 or 1", GAINS_IN_TABLE);
  end
  if (POPCOUNT_LANES < 1 || ADDER_LANES < 1 || ADDER_FANIN < 2) begin : g_check_tree
    $error("bnnc_mvtu: sum tree needs POPCOUNT_LANES, ADDER_LANES >= 1 and ADDER_FANIN >= 2");
  end

  wire advance = !out_valid || out_ready;

  // ---------------------------------------------------------------- stage 0: issue
  logic busy;
  logic [NFW-1:0] nf;
  logic [SFW-1:0] sf;
  logic [WAW-1:0] waddr;
  logic [SF*LW-1:0] window;  // the latched input vector, padded with idle lanes
  logic [KB-1:0] cls;

  // the fold being issued is the vector's last: a register, since it gates the wide input latch
  logic at_last;
  assign in_ready = advance && (!busy || at_last);
  wire start = in_valid && in_ready;

  function automatic logic [KB-1:0] class_of(input logic [RB-1:0] row, input logic [COLB-1:0] col);
    class_of = KB'(ROW_CLASSES[row*ROW_CLASS_BITS+:ROW_CLASS_BITS]) * KB'(COL_CLASS_COUNT) + KB'(COL_CLASSES[col*COL_CLASS_BITS+:COL_CLASS_BITS]);
  endfunction

  // the window rotates by one fold's chunk per fold, so the chunk in use is always its lowest (a
  // multiplexer over SF chunks, indexed by sf, would be SF inputs deep); after SF folds it is back
  // in place for the next row fold
  logic [SF*LW-1:0] window_next;
  if (SF > 1) begin : g_rotate
    assign window_next = {window[LW-1:0], window[SF*LW-1:LW]};
  end else begin : g_hold
    assign window_next = window;
  end
  always_ff @(posedge clk) begin
    if (advance && start) begin
      window <= (SF * LW)'(in_data);
      cls <= class_of(in_row, in_col);
    end else if (advance && busy) begin
      window <= window_next;
    end
  end

  // ---------------------------------------------------------------- stage 1: weight read
  logic s1_valid, s1_first, s1_last;
  logic [NFW-1:0] s1_nf;
  logic [TAW-1:0] s1_taddr;  // the fold's table entry: class*NF + nf
  logic [LW-1:0] s1_x, s2_x;
  logic [WW-1:0] s2_w;

  // two cycles: the block RAM's output is registered (and its banks selected) before the operands
  bnnc_rom #(
      .W(WW),
      .D(WD),
      .FILE(WEIGHT_FILE),
      .LATENCY(2),
      .BANK_DEPTH(WEIGHT_BANK_DEPTH)
  ) weights (
      .clk (clk),
      .en  (advance),
      .addr(waddr),
      .q   (s2_w)
  );

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      busy <= 1'b0;
      nf <= '0;
      sf <= '0;
      at_last <= WD == 1;
      waddr <= '0;
      s1_valid <= 1'b0;
    end else if (advance) begin
      s1_valid <= busy;
      if (busy) begin
        sf <= sf == SFW'(SF - 1) ? '0 : sf + 1'b1;
        if (sf == SFW'(SF - 1)) nf <= at_last ? '0 : nf + 1'b1;
        // next fold is the last: the one before it now (or a one-fold vector, again)
        at_last <= WD == 1 || waddr == WAW'(WD - 2);
        waddr <= waddr == WAW'(WD - 1) ? '0 : waddr + 1'b1;
        if (at_last && !start) busy <= 1'b0;
      end else if (start) begin
        busy <= 1'b1;
      end
    end
  end

  // a class's first table entry, class*NF, by a decoder: the product on the table address took a DSP
  // and most of a cycle before the table read (hbn at 93 MHz)
  function automatic logic [TAW-1:0] table_base(input logic [KB-1:0] k);
    table_base = '0;
    for (int i = 1; i < BORDER_CLASSES; i++) if (k == KB'(i)) table_base = TAW'(i * NF);
  endfunction
  always_ff @(posedge clk) begin
    if (advance && busy) begin
      s1_x <= window[LW-1:0];
      s1_first <= sf == '0;
      s1_last <= sf == SFW'(SF - 1);
      s1_nf <= nf;
      s1_taddr <= table_base(cls) + TAW'(nf);
    end
  end

  // ---------------------------------------------------------------- stages 2, 3: operands
  // Block RAM clock-to-output is most of a cycle at speed: the weights and their input chunk go
  // through registers before any logic.
  logic [WW-1:0] op_w;
  logic [LW-1:0] op_x;
  always_ff @(posedge clk) begin
    if (advance) begin
      s2_x <= s1_x;
      op_w <= s2_w;
      op_x <= s2_x;
    end
  end

  // ---------------------------------------------------------------- stages 4 .. 4+LEVELS: sum tree
  // Lane groups of GROUP lanes are summed into registers (popcounts for bits, adders for integers),
  // then ADDER_FANIN values per register level until one partial sum is left. The fold's control
  // (first/last fold, nf, class, valid) travels alongside in a shift register of the same depth.
  // (multiply-accumulate lanes: one product per register, a multiplier is a cycle's work)
  localparam int GROUP = MAC == 1 ? 1 : INPUT_BITS == 1 ? POPCOUNT_LANES : ADDER_LANES;
  localparam int NG = (SIMD + GROUP - 1) / GROUP;  // first-level registers per row and plane
  // a tree of n first-level registers (here and in the threshold count below)
  function automatic int tree_levels(input int n);  // register levels after the first to reach one value
    tree_levels = 0;
    for (int m = n; m > 1; m = (m + ADDER_FANIN - 1) / ADDER_FANIN) tree_levels++;
  endfunction
  function automatic int tree_nodes(input int n, input int level);  // registers at a level of the tree
    tree_nodes = n;
    for (int l = 0; l < level; l++) tree_nodes = (tree_nodes + ADDER_FANIN - 1) / ADDER_FANIN;
  endfunction
  function automatic int tree_base(input int n, input int level);  // registers below a level
    tree_base = 0;
    for (int l = 0; l < level; l++) tree_base += tree_nodes(n, l);
  endfunction
  localparam int LEVELS = tree_levels(NG);
  localparam int TREE = tree_base(NG, LEVELS + 1);  // registers of one tree
  localparam int CTRL = 3 + NFW + TAW;  // valid, first, last, nf, table address
  localparam int DELAY = 3 + LEVELS;  // stage 1 -> accumulate

  logic [DELAY*CTRL-1:0] ctrl_pipe;
  wire [CTRL-1:0] ctrl_in = {s1_valid, s1_first, s1_last, s1_nf, s1_taddr};
  always_ff @(posedge clk) begin
    if (!rst_n) ctrl_pipe <= '0;
    else if (advance) ctrl_pipe <= {ctrl_pipe[(DELAY-1)*CTRL-1:0], ctrl_in};
  end
  wire [CTRL-1:0] ctrl_acc = ctrl_pipe[(DELAY-1)*CTRL+:CTRL];
  wire a_valid = ctrl_acc[CTRL-1];
  wire a_first = ctrl_acc[CTRL-2];
  wire a_last = ctrl_acc[CTRL-3];
  wire [NFW-1:0] a_nf = ctrl_acc[TAW+:NFW];
  wire [TAW-1:0] a_taddr = ctrl_acc[0+:TAW];

  // ---------------------------------------------------------------- accumulate
  logic signed [SUM_BITS-1:0] acc[PE][PLANES];
  logic signed [SUM_BITS-1:0] partial[PE][PLANES];
  logic signed [SUM_BITS-1:0] sum[PE][PLANES];

  for (genvar p = 0; p < PE; p++) begin : g_row
    for (genvar j = 0; j < PLANES; j++) begin : g_plane
      logic [TREE*SUM_BITS-1:0] tree, tree_d;
      if (MAC == 1) begin : g_mac
        // one tree of lane products per row; the planes' other trees stay zero (synthesis drops them)
        for (genvar g = 0; g < NG; g++) begin : g_group
          localparam int LO = g * GROUP;
          localparam int N = SIMD - LO < GROUP ? SIMD - LO : GROUP;
          logic signed [SUM_BITS-1:0] group_sum;
          always_comb begin
            logic signed [INPUT_BITS+WEIGHT_BITS-1:0] product;  // exact: operands sign-extended to its width
            group_sum = '0;
            if (j == 0) begin
              for (int s = LO; s < LO + N; s++) begin
                product = $signed(op_x[s*INPUT_BITS+:INPUT_BITS]) * $signed(op_w[(p*SIMD+s)*WEIGHT_BITS+:WEIGHT_BITS]);
                group_sum = group_sum + SUM_BITS'(product);
              end
            end
          end
          assign tree_d[g*SUM_BITS+:SUM_BITS] = group_sum;
        end
      end else begin : g_planes
        logic [SIMD-1:0] wb, wm;
        if (PLANE_FLIPS[j]) begin : g_b
          assign wb = op_w[(array_b(j)*PE+p)*SIMD+:SIMD];
        end else begin : g_no_b
          assign wb = '0;
        end
        if (PLANE_MASKS[j]) begin : g_m
          assign wm = op_w[((array_b(j)+int'(PLANE_FLIPS[j]))*PE+p)*SIMD+:SIMD];
        end else begin : g_no_m
          assign wm = '1;
        end
        for (genvar g = 0; g < NG; g++) begin : g_group
          localparam int LO = g * GROUP;
          localparam int N = SIMD - LO < GROUP ? SIMD - LO : GROUP;
          if (INPUT_BITS == 1) begin : g_xnor
            assign tree_d[g*SUM_BITS+:SUM_BITS] = SUM_BITS'($countones((op_x[LO+:N] ^ wb[LO+:N]) & wm[LO+:N]));
          end else begin : g_int
            logic signed [SUM_BITS-1:0] group_sum;
            always_comb begin
              group_sum = '0;
              for (int s = LO; s < LO + N; s++) begin
                if (wm[s]) begin
                  if (wb[s]) group_sum = group_sum - SUM_BITS'($signed(op_x[s*INPUT_BITS+:INPUT_BITS]));
                  else group_sum = group_sum + SUM_BITS'($signed(op_x[s*INPUT_BITS+:INPUT_BITS]));
                end
              end
            end
            assign tree_d[g*SUM_BITS+:SUM_BITS] = group_sum;
          end
        end
      end
      for (genvar l = 1; l <= LEVELS; l++) begin : g_level
        for (genvar i = 0; i < tree_nodes(NG, l); i++) begin : g_node
          logic signed [SUM_BITS-1:0] node_sum;
          always_comb begin
            node_sum = '0;
            for (int k = ADDER_FANIN * i; k < ADDER_FANIN * (i + 1); k++) begin
              if (k < tree_nodes(NG, l - 1)) node_sum = node_sum + $signed(tree[(tree_base(NG, l-1)+k)*SUM_BITS+:SUM_BITS]);
            end
          end
          assign tree_d[(tree_base(NG, l)+i)*SUM_BITS+:SUM_BITS] = node_sum;
        end
      end
      always_ff @(posedge clk) begin
        if (advance) tree <= tree_d;
      end
      assign partial[p][j] = $signed(tree[(TREE-1)*SUM_BITS+:SUM_BITS]);
      assign sum[p][j] = (a_first ? '0 : acc[p][j]) + partial[p][j];
    end
  end

  always_ff @(posedge clk) begin
    if (advance && a_valid) begin
      for (int p = 0; p < PE; p++) for (int j = 0; j < PLANES; j++) acc[p][j] <= sum[p][j];
    end
  end

  // ---------------------------------------------------------------- epilogue
  // e1: a row's sums after its last fold, with its table entry (block RAM output, registered at
  // e2 before any logic); e2: the compared value; e3: threshold compare / offset / requantization.
  logic e1_valid, e2_valid, e3_valid;
  logic [NFW-1:0] e1_nf, e2_nf, e3_nf;
  logic signed [SUM_BITS-1:0] e1_sum[PE][PLANES];
  logic signed [SUM_BITS-1:0] e2_sum[PE][PLANES];
  logic [PE*EW-1:0] e1_t, e2_t;
  /* verilator lint_off UNUSEDSIGNAL */  // the gains were applied at e2 (synthesis drops them)
  logic [PE*EW-1:0] e3_t;
  /* verilator lint_on UNUSEDSIGNAL */

  bnnc_rom #(
      .W(PE * EW),
      .D(TD),
      .FILE(TABLE_FILE)
  ) tables (
      .clk (clk),
      .en  (advance),
      .addr(a_taddr),
      .q   (e1_t)
  );

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      e1_valid <= 1'b0;
      e2_valid <= 1'b0;
      e3_valid <= 1'b0;
    end else if (advance) begin
      e1_valid <= a_valid && a_last;
      e2_valid <= e1_valid;
      e3_valid <= e2_valid;
    end
  end

  always_ff @(posedge clk) begin
    if (advance) begin
      if (a_valid && a_last) begin
        e1_nf <= a_nf;
        for (int p = 0; p < PE; p++) for (int j = 0; j < PLANES; j++) e1_sum[p][j] <= sum[p][j];
      end
      e2_nf <= e1_nf;
      for (int p = 0; p < PE; p++) for (int j = 0; j < PLANES; j++) e2_sum[p][j] <= e1_sum[p][j];
      e2_t <= e1_t;
      e3_nf <= e2_nf;
      e3_t <= e2_t;
    end
  end

  localparam int ROW = ACT_PLANES * OUT_BITS;  // output bits of one row
  // the count of a multi-bit activation's compare bits (THRESHOLDS > 1, one activation plane) is
  // pipelined: compare bits, groups of POPCOUNT_LANES, then the tree's levels, one register each
  localparam int COUNT_GROUPS = (THRESHOLDS + POPCOUNT_LANES - 1) / POPCOUNT_LANES;
  localparam int COUNT_LEVELS = tree_levels(COUNT_GROUPS);
  localparam int COUNT_TREE = tree_base(COUNT_GROUPS, COUNT_LEVELS + 1);
  localparam int COUNT_STAGES = THRESHOLDS > 1 && ACT_PLANES == 1 ? 2 + COUNT_LEVELS : 0;
  logic [PE*ROW-1:0] fold_out, e4_out;
  logic [NFW-1:0] e4_nf;
  logic e4_valid;
  for (genvar p = 0; p < PE; p++) begin : g_out
    logic signed [CB-1:0] c_d, c;  // the compared value
    if (MAC == 1) begin : g_mac_value
      assign c_d = CB'(e2_sum[p][0]);
    end else if (GAINS_IN_TABLE == 1) begin : g_gains
      always_comb begin
        c_d = '0;
        for (int j = 0; j < PLANES; j++) begin
          c_d = c_d + VALUE_BITS'($signed(e2_t[p*EW+VT+j*GAIN_BITS+:GAIN_BITS])) * VALUE_BITS'(e2_sum[p][j]);  // exact modulo 2**VALUE_BITS
        end
      end
    end else begin : g_single
      assign c_d = e2_sum[p][0];
    end
    always_ff @(posedge clk) begin
      if (advance) c <= c_d;
    end
    if (THRESHOLDS == 0) begin : g_acc
      wire signed [ACC_BITS-1:0] off = ACC_BITS'($signed(e3_t[p*EW+:TABLE_BITS]));
      logic signed [ACC_BITS-1:0] acc_v;  // the IR's accumulator
      if (GAINS_IN_TABLE == 1) begin : g_v
        assign acc_v = off + ACC_BITS'(c);
      end else if (GAIN == 1) begin : g_int
        wire flag = e3_t[p*EW+EW-1];
        assign acc_v = flag ? off + ACC_BITS'(c) : off;
      end else begin : g_bits
        wire flag = e3_t[p*EW+EW-1];
        wire signed [ACC_BITS-1:0] s = ACC_BITS'(c);
        assign acc_v = flag ? off + ACC_BITS'(GAIN) * s : off;
      end
      if (REQUANTIZE == 1) begin : g_requantize
        // out = clamp(floor((clamp(acc, lo, hi) * mult + add) / 2**SHIFT), OUT_MIN, OUT_MAX), exact in PRODUCT_BITS bits,
        // one operation per register (REQUANT_STAGES): accumulator; clamp; product; sum; then shift and clamp
        // into e4. The table values travel alongside until used.
        localparam int KW = ACC_BITS > PRODUCT_BITS ? ACC_BITS : PRODUCT_BITS;
        // the clamped value lies in [lo, hi] (table values); only its, mult's and add's low PRODUCT_BITS bits reach
        // the result's low PRODUCT_BITS bits, so the multiplier is no wider than the table
        localparam int MW = TABLE_BITS < PRODUCT_BITS ? TABLE_BITS : PRODUCT_BITS;
        logic signed [ACC_BITS-1:0] r1_acc;
        logic signed [MW-1:0] r2_a;
        logic signed [PRODUCT_BITS-1:0] r3_p, r4_s;
        logic signed [MW-1:0] r1_mult, r2_mult, r1_add, r2_add, r3_add;
        logic signed [TABLE_BITS-1:0] r1_lo, r1_hi;
        always_ff @(posedge clk) begin
          if (advance) begin
            r1_acc <= acc_v;
            r1_mult <= MW'($signed(e3_t[p*EW+TABLE_BITS+:TABLE_BITS]));
            r1_add <= MW'($signed(e3_t[p*EW+2*TABLE_BITS+:TABLE_BITS]));
            r1_lo <= $signed(e3_t[p*EW+3*TABLE_BITS+:TABLE_BITS]);
            r1_hi <= $signed(e3_t[p*EW+4*TABLE_BITS+:TABLE_BITS]);
          end
        end
        // the accumulator (shifted right by PRE_SHIFT first) meets its clamp in the wider of the two widths
        wire signed [KW-1:0] lo = KW'(r1_lo);
        wire signed [KW-1:0] hi = KW'(r1_hi);
        wire signed [KW-1:0] acc_s = KW'(r1_acc) >>> PRE_SHIFT;
        wire signed [PRODUCT_BITS-1:0] a_w = PRODUCT_BITS'(r2_a);
        wire signed [PRODUCT_BITS-1:0] mult_w = PRODUCT_BITS'(r2_mult);
        always_ff @(posedge clk) begin
          if (advance) begin
            r2_a <= MW'(acc_s < lo ? lo : acc_s > hi ? hi : acc_s);
            r2_mult <= r1_mult;
            r2_add <= r1_add;
            r3_p <= a_w * mult_w;
            r3_add <= r2_add;
            r4_s <= r3_p + PRODUCT_BITS'(r3_add);
          end
        end
        wire signed [PRODUCT_BITS-1:0] q = r4_s >>> SHIFT;
        assign fold_out[p*ROW+:ROW] = ROW'(q < PRODUCT_BITS'(OUT_MIN) ? PRODUCT_BITS'(OUT_MIN) : q > PRODUCT_BITS'(OUT_MAX) ? PRODUCT_BITS'(OUT_MAX) : q);
      end else begin : g_out_acc
        assign fold_out[p*ROW+:ROW] = ROW'(acc_v);
      end
    end else if (ACT_PLANES > 1) begin : g_planes
      for (genvar j = 0; j < ACT_PLANES; j++) begin : g_bit
        assign fold_out[p*ROW+j] = (CMW'(c) > CMW'($signed(e3_t[p*EW+j*TABLE_BITS+:TABLE_BITS]))) ^ e3_t[p*EW+EW-NFL+j];
      end
    end else begin : g_thr
      wire flag = e3_t[p*EW+EW-1];
      logic [THRESHOLDS-1:0] above;
      for (genvar j = 0; j < THRESHOLDS; j++) begin : g_cmp
        assign above[j] = (CMW'(c) > CMW'($signed(e3_t[p*EW+j*TABLE_BITS+:TABLE_BITS]))) ^ flag;
      end
      logic [NW-1:0] count;
      if (COUNT_STAGES == 0) begin : g_count_now
        assign count = NW'($countones(above));
      end else begin : g_count_tree
        // the compare bits registered, counted in groups of POPCOUNT_LANES into registers, then
        // ADDER_FANIN counts added per register level (COUNT_STAGES registers; a 255-input count
        // in one cycle held bireal at 63 MHz)
        logic [THRESHOLDS-1:0] above_r;
        logic [COUNT_TREE*NW-1:0] ctree, ctree_d;
        for (genvar g = 0; g < COUNT_GROUPS; g++) begin : g_group
          localparam int LO = g * POPCOUNT_LANES;
          localparam int N = THRESHOLDS - LO < POPCOUNT_LANES ? THRESHOLDS - LO : POPCOUNT_LANES;
          assign ctree_d[g*NW+:NW] = NW'($countones(above_r[LO+:N]));
        end
        for (genvar l = 1; l <= COUNT_LEVELS; l++) begin : g_level
          for (genvar i = 0; i < tree_nodes(COUNT_GROUPS, l); i++) begin : g_node
            logic [NW-1:0] node_count;  // at most THRESHOLDS: no overflow
            always_comb begin
              node_count = '0;
              for (int k = ADDER_FANIN * i; k < ADDER_FANIN * (i + 1); k++) begin
                if (k < tree_nodes(COUNT_GROUPS, l - 1)) node_count = node_count + ctree[(tree_base(COUNT_GROUPS, l-1)+k)*NW+:NW];
              end
            end
            assign ctree_d[(tree_base(COUNT_GROUPS, l)+i)*NW+:NW] = node_count;
          end
        end
        always_ff @(posedge clk) begin
          if (advance) begin
            above_r <= above;
            ctree <= ctree_d;
          end
        end
        assign count = ctree[(COUNT_TREE-1)*NW+:NW];
      end
      assign fold_out[p*ROW+:ROW] = ROW'(LEVEL_BASE + LEVEL_STEP * $signed({1'b0, count}));
    end
  end

  // a requantization's four registers, or a pipelined threshold count's, between e3 and e4: the
  // fold's valid and nf wait alongside
  localparam int REQUANT_STAGES = REQUANTIZE == 1 ? 4 : 0;
  localparam int WAIT_STAGES = REQUANT_STAGES + COUNT_STAGES;  // one of them is 0
  logic r_valid;
  logic [NFW-1:0] r_nf;
  if (WAIT_STAGES > 0) begin : g_requant_wait
    logic [WAIT_STAGES-1:0] valid_pipe;
    logic [WAIT_STAGES*NFW-1:0] nf_pipe;
    always_ff @(posedge clk) begin
      if (!rst_n) valid_pipe <= '0;
      else if (advance) valid_pipe <= WAIT_STAGES'({valid_pipe, e3_valid});
    end
    always_ff @(posedge clk) begin
      if (advance) nf_pipe <= (WAIT_STAGES * NFW)'({nf_pipe, e3_nf});
    end
    assign r_valid = valid_pipe[WAIT_STAGES-1];
    assign r_nf = nf_pipe[(WAIT_STAGES-1)*NFW+:NFW];
  end else begin : g_no_wait
    assign r_valid = e3_valid;
    assign r_nf = e3_nf;
  end

  always_ff @(posedge clk) begin
    if (!rst_n) e4_valid <= 1'b0;
    else if (advance) e4_valid <= r_valid;
  end
  always_ff @(posedge clk) begin
    if (advance) begin
      e4_out <= fold_out;
      e4_nf <= r_nf;
    end
  end

  // ---------------------------------------------------------------- output pixel
  /* verilator lint_off UNUSEDSIGNAL */  // rows beyond MATRIX_ROWS of the last fold
  logic [NF*PE*ROW-1:0] pixel, pixel_next;
  /* verilator lint_on UNUSEDSIGNAL */
  always_comb begin
    pixel_next = pixel;
    // a decoder per fold, not an indexed part-select (whose index multiply took a DSP and most of a cycle)
    for (int f = 0; f < NF; f++) if (e4_nf == NFW'(f)) pixel_next[f*PE*ROW+:PE*ROW] = e4_out;
  end

  // output element j * MATRIX_ROWS + o is row o's element j (j > 0 only for activation planes)
  logic [MATRIX_ROWS*ACT_PLANES*OUT_BITS-1:0] ordered;
  for (genvar o = 0; o < MATRIX_ROWS; o++) begin : g_order
    for (genvar j = 0; j < ACT_PLANES; j++) begin : g_el
      assign ordered[(j*MATRIX_ROWS+o)*OUT_BITS+:OUT_BITS] = pixel_next[(o*ACT_PLANES+j)*OUT_BITS+:OUT_BITS];
    end
  end

  always_ff @(posedge clk) begin
    if (advance && e4_valid) begin
      pixel <= pixel_next;
      if (e4_nf == NFW'(NF - 1)) out_data <= ordered;
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) out_valid <= 1'b0;
    else begin
      if (out_valid && out_ready) out_valid <= 1'b0;
      if (advance && e4_valid && e4_nf == NFW'(NF - 1)) out_valid <= 1'b1;
    end
  end
endmodule
`default_nettype wire
