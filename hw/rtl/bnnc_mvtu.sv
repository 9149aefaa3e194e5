// Matrix-vector-threshold unit with PE x SIMD folding.
//
// For every input vector x (MW elements; a window from bnnc_swg or a pixel) the unit computes MH
// outputs on PE rows x SIMD lanes: each cycle ("fold" (nf, sf)) row p of the PE rows handles
// matrix row o = nf*PE + p and lanes s handle columns k = sf*SIMD + s, so a vector takes
// NF*SF = ceil(MH/PE) * ceil(MW/SIMD) cycles. Rows o >= MH and lanes k >= MW of the last folds
// are idle: their weight bits and inputs are 0, so they add exactly 0.
//
// Per row it accumulates s over the SF folds:
//   IB == 1 (binary):  s = popcount(x XOR w), bits 1 = -1 (the XNOR-popcount of a +-1 product)
//   IB  > 1 (integer): s = sum of (w ? -x : x), x signed IB-bit, w bit 1 = -1
// and then, with per-(class, row) tables from TFILE (class = border class of the output position,
// YCLS[out_row] * NX + XCLS[out_col], see compiler/passes/layout_folded_layers.py):
//   NT >= 1: n = number of thresholds j with (s > thr_j) XOR flag, out = LB + LS * n
//            (NT = 1, LB = 0, LS = 1: one output bit; NT > 1: a multi-bit activation)
//   NT == 0: out = off + (flag ? GAIN * s : 0)                        (the integer accumulator)
// Weights: WFILE, NF*SF words of PE*SIMD bits (row p lane s at bit p*SIMD + s), address
// nf*SF + sf. Tables: TFILE, NCLS*NF words of PE*EW bits, EW = max(NT,1)*TB + 1 (row p at
// p*EW: thresholds/offset at j*TB, flag at EW-1), address class*NF + nf.
//
// Pipeline: issue (fold counters, weight read) -> accumulate -> threshold/offset -> output pixel
// of MH*OB bits. The whole unit stalls only while a finished output waits for out_ready; the next
// input vector is latched during the last fold of the current one, so back-to-back vectors run
// without bubbles.
module bnnc_mvtu #(
    parameter int MH = 4,
    parameter int MW = 8,
    parameter int PE = 2,
    parameter int SIMD = 4,
    parameter int IB = 1,
    parameter int SB = 8,
    parameter int NT = 1,
    parameter int TB = 8,
    parameter int AB = 8,
    parameter int GAIN = -2,
    parameter int NCLS = 1,
    parameter int NX = 1,
    parameter int OHR = 1,
    parameter int OWC = 1,
    parameter int YB = 1,
    parameter int XB = 1,
    parameter logic [OHR*YB-1:0] YCLS = '0,
    parameter logic [OWC*XB-1:0] XCLS = '0,
    parameter WFILE = "",
    parameter TFILE = "",
    parameter int LB = 0,
    parameter int LS = 1,
    parameter int OB = NT == 0 ? AB : $clog2(NT + 1),  // output element bits (signed when LB < 0)
    localparam int RB = OHR > 1 ? $clog2(OHR) : 1,
    localparam int CB = OWC > 1 ? $clog2(OWC) : 1
) (
    input  logic             clk,
    input  logic             rst_n,
    input  logic             in_valid,
    output logic             in_ready,
    input  logic [MW*IB-1:0] in_data,
    input  logic [   RB-1:0] in_row,
    input  logic [   CB-1:0] in_col,
    output logic             out_valid,
    input  logic             out_ready,
    output logic [MH*OB-1:0] out_data
);
  localparam int NF = (MH + PE - 1) / PE;
  localparam int SF = (MW + SIMD - 1) / SIMD;
  localparam int NFW = NF > 1 ? $clog2(NF) : 1;
  localparam int SFW = SF > 1 ? $clog2(SF) : 1;
  localparam int WD = NF * SF;
  localparam int WAW = WD > 1 ? $clog2(WD) : 1;
  localparam int TD = NCLS * NF;
  localparam int TAW = TD > 1 ? $clog2(TD) : 1;
  localparam int KB = NCLS > 1 ? $clog2(NCLS) : 1;
  localparam int EW = (NT > 0 ? NT : 1) * TB + 1;
  localparam int LW = SIMD * IB;  // bits of one fold's input chunk
  localparam int CMW = SB > TB ? SB : TB;  // width in which s meets its thresholds
  localparam int NW = $clog2((NT > 0 ? NT : 1) + 1);  // width of a threshold count

  wire advance = !out_valid || out_ready;

  // ---------------------------------------------------------------- stage 0: issue
  logic busy;
  logic [NFW-1:0] nf;
  logic [SFW-1:0] sf;
  logic [WAW-1:0] waddr;
  logic [SF*LW-1:0] window;  // the latched input vector, padded with idle lanes
  logic [KB-1:0] cls;

  wire at_last = nf == NFW'(NF - 1) && sf == SFW'(SF - 1);
  assign in_ready = advance && (!busy || at_last);
  wire start = in_valid && in_ready;

  function automatic logic [KB-1:0] class_of(input logic [RB-1:0] row, input logic [CB-1:0] col);
    class_of = KB'(YCLS[row*YB+:YB]) * KB'(NX) + KB'(XCLS[col*XB+:XB]);
  endfunction

  always_ff @(posedge clk) begin
    if (advance && start) begin
      window <= (SF * LW)'(in_data);
      cls <= class_of(in_row, in_col);
    end
  end

  // ---------------------------------------------------------------- stage 1: accumulate
  logic s1_valid, s1_first, s1_last;
  logic [NFW-1:0] s1_nf;
  logic [KB-1:0] s1_cls;
  logic [LW-1:0] s1_x;
  logic [PE*SIMD-1:0] s1_w;

  bnnc_rom #(
      .W(PE * SIMD),
      .D(WD),
      .FILE(WFILE)
  ) weights (
      .clk (clk),
      .en  (advance),
      .addr(waddr),
      .q   (s1_w)
  );

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      busy <= 1'b0;
      nf <= '0;
      sf <= '0;
      waddr <= '0;
      s1_valid <= 1'b0;
    end else if (advance) begin
      s1_valid <= busy;
      if (busy) begin
        sf <= sf == SFW'(SF - 1) ? '0 : sf + 1'b1;
        if (sf == SFW'(SF - 1)) nf <= at_last ? '0 : nf + 1'b1;
        waddr <= waddr == WAW'(WD - 1) ? '0 : waddr + 1'b1;
        if (at_last && !start) busy <= 1'b0;
      end else if (start) begin
        busy <= 1'b1;
      end
    end
  end

  always_ff @(posedge clk) begin
    if (advance && busy) begin
      s1_x <= window[sf*LW+:LW];
      s1_first <= sf == '0;
      s1_last <= sf == SFW'(SF - 1);
      s1_nf <= nf;
      s1_cls <= cls;
    end
  end

  logic signed [SB-1:0] acc[PE];
  logic signed [SB-1:0] partial[PE];
  logic signed [SB-1:0] sum[PE];

  for (genvar p = 0; p < PE; p++) begin : g_row
    if (IB == 1) begin : g_xnor
      assign partial[p] = SB'($countones(s1_x ^ s1_w[p*SIMD+:SIMD]));
    end else begin : g_int
      always_comb begin
        partial[p] = '0;
        for (int s = 0; s < SIMD; s++) begin
          if (s1_w[p*SIMD+s]) partial[p] = partial[p] - SB'($signed(s1_x[s*IB+:IB]));
          else partial[p] = partial[p] + SB'($signed(s1_x[s*IB+:IB]));
        end
      end
    end
    assign sum[p] = (s1_first ? '0 : acc[p]) + partial[p];
  end

  always_ff @(posedge clk) begin
    if (advance && s1_valid) begin
      for (int p = 0; p < PE; p++) acc[p] <= sum[p];
    end
  end

  // ---------------------------------------------------------------- stage 2: thresholds
  logic s2_valid;
  logic [NFW-1:0] s2_nf;
  logic signed [SB-1:0] s2_sum[PE];
  logic [PE*EW-1:0] s2_t;

  bnnc_rom #(
      .W(PE * EW),
      .D(TD),
      .FILE(TFILE)
  ) tables (
      .clk (clk),
      .en  (advance),
      .addr(TAW'(s1_cls) * TAW'(NF) + TAW'(s1_nf)),
      .q   (s2_t)
  );

  always_ff @(posedge clk) begin
    if (!rst_n) s2_valid <= 1'b0;
    else if (advance) s2_valid <= s1_valid && s1_last;
  end

  always_ff @(posedge clk) begin
    if (advance && s1_valid && s1_last) begin
      s2_nf <= s1_nf;
      for (int p = 0; p < PE; p++) s2_sum[p] <= sum[p];
    end
  end

  logic [PE*OB-1:0] fold_out;
  for (genvar p = 0; p < PE; p++) begin : g_out
    wire flag = s2_t[p*EW+EW-1];
    if (NT == 0) begin : g_acc
      wire signed [AB-1:0] s = AB'(s2_sum[p]);
      wire signed [AB-1:0] off = AB'($signed(s2_t[p*EW+:TB]));
      if (GAIN == 1) begin : g_int
        assign fold_out[p*OB+:OB] = OB'(flag ? off + s : off);
      end else begin : g_bits
        assign fold_out[p*OB+:OB] = OB'(flag ? off - (s <<< 1) : off);
      end
    end else begin : g_thr
      logic [NW-1:0] count;
      always_comb begin
        count = '0;
        for (int j = 0; j < NT; j++) begin
          count = count + NW'((CMW'(s2_sum[p]) > CMW'($signed(s2_t[p*EW+j*TB+:TB]))) ^ flag);
        end
      end
      assign fold_out[p*OB+:OB] = OB'(LB + LS * $signed({1'b0, count}));
    end
  end

  // ---------------------------------------------------------------- output pixel
  /* verilator lint_off UNUSEDSIGNAL */  // rows beyond MH of the last fold
  logic [NF*PE*OB-1:0] pixel, pixel_next;
  /* verilator lint_on UNUSEDSIGNAL */
  always_comb begin
    pixel_next = pixel;
    pixel_next[s2_nf*PE*OB+:PE*OB] = fold_out;
  end

  always_ff @(posedge clk) begin
    if (advance && s2_valid) begin
      pixel <= pixel_next;
      if (s2_nf == NFW'(NF - 1)) out_data <= pixel_next[MH*OB-1:0];
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) out_valid <= 1'b0;
    else begin
      if (out_valid && out_ready) out_valid <= 1'b0;
      if (advance && s2_valid && s2_nf == NFW'(NF - 1)) out_valid <= 1'b1;
    end
  end
endmodule
